"""Output files: every system error is one line and exit 1, the previous file survives, and no
temporary file is left behind (also after kill -9); two compiles give the same bytes."""
import errno
import os
import signal
import subprocess
import sys
import time

import pytest

from graphres import cli, fileio
from graphres.fileio import OutputError, remove_stale_temps, write_atomic

from conftest import ROOT, run_cli

SPEC = ROOT / "specs" / "resnet18.yaml"
SMALL = ["--set", "input.size=[64, 64]"]


def listing(path):
    return sorted(os.listdir(path))


def test_output_naming_a_directory(tmp_path):
    (tmp_path / "out").mkdir()
    r = run_cli("expand", SPEC, "-o", "out", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (1, "graphres: error: cannot write 'out': it is a directory\n")
    assert listing(tmp_path / "out") == []


def test_output_under_a_regular_file(tmp_path):
    (tmp_path / "notes.txt").write_text("keep")
    r = run_cli("expand", SPEC, "-o", "notes.txt/deeper/x.yaml", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (
        1, "graphres: error: cannot write 'notes.txt/deeper/x.yaml': 'notes.txt' is a file, not a directory\n")
    r = run_cli("render", SPEC, "-o", "notes.txt/x.dot", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (
        1, "graphres: error: cannot write 'notes.txt/x.dot': 'notes.txt' is a file, not a directory\n")
    assert (tmp_path / "notes.txt").read_text() == "keep"


def test_compile_output_errors_are_one_line(tmp_path):
    (tmp_path / "d").mkdir()
    r = run_cli("compile", SPEC, *SMALL, "-o", "d", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (1, "graphres: error: cannot write 'd': it is a directory\n")
    (tmp_path / "f").write_text("")
    r = run_cli("compile", SPEC, *SMALL, "-o", "f/x.pt2", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (1, "graphres: error: cannot write 'f/x.pt2': 'f' is a file, not a directory\n")
    assert listing(tmp_path) == ["d", "f"] and listing(tmp_path / "d") == []


@pytest.mark.parametrize("code,reason", [(errno.ENOSPC, "no space left on the device"),
                                         (errno.EROFS, "read-only file system"),
                                         (errno.EACCES, "permission denied")])
def test_write_errors_keep_the_previous_file_and_leave_no_temp(tmp_path, monkeypatch, capsys, code, reason):
    """A full disk, a read-only file system, a directory we may not write (simulated: the tests may
    run as root, and a real full disk needs a mount). Checked on a 2 MB tmpfs too, see docs/limits.md."""
    out = tmp_path / "x.yaml"
    out.write_text("previous\n")

    def failing_write(fd, data):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fileio, "_write_all", failing_write)
    assert cli.main(["expand", str(SPEC), "-o", str(out)]) == 1
    assert capsys.readouterr().err == f"graphres: error: cannot write '{out}': {reason}\n"
    assert out.read_text() == "previous\n"
    assert listing(tmp_path) == ["x.yaml"]
    monkeypatch.setattr(fileio, "_write_unnamed", lambda output, data: False)  # the named temporary file too
    assert cli.main(["expand", str(SPEC), "-o", str(out)]) == 1
    assert capsys.readouterr().err == f"graphres: error: cannot write '{out}': {reason}\n"
    assert out.read_text() == "previous\n" and listing(tmp_path) == ["x.yaml"]


def test_write_atomic_without_o_tmpfile(tmp_path, monkeypatch):
    monkeypatch.setattr(fileio, "_write_unnamed", lambda output, data: False)
    write_atomic(tmp_path / "a.txt", b"data")
    assert (tmp_path / "a.txt").read_bytes() == b"data" and listing(tmp_path) == ["a.txt"]
    assert oct((tmp_path / "a.txt").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask():
    u = os.umask(0)
    os.umask(u)
    return u


def test_output_error_is_an_os_error_and_a_graphres_error(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(OutputError) as e:
        write_atomic(tmp_path / "f" / "x", b"")
    assert isinstance(e.value, OSError) and e.value.errno in (errno.ENOTDIR, errno.EEXIST)
    assert str(e.value) == f"cannot write '{tmp_path / 'f' / 'x'}': '{tmp_path / 'f'}' is a file, not a directory"


def test_stale_temporary_files_are_removed_on_the_next_write(tmp_path):
    dead = tmp_path / ".x.pt2.999999999.abcdefgh.tmp.pt2"  # a process id that no process has
    mine = tmp_path / f".x.pt2.{os.getpid()}.abcdefgh.tmp"  # this process: still running
    old = tmp_path / ".x.pt2.k2j4h5g6.tmp.pt2"  # the naming before the process id, an hour old
    young = tmp_path / ".x.pt2.a1b2c3d4.tmp.pt2"
    other = tmp_path / ".y.pt2.999999999.abcdefgh.tmp"  # another target's
    for p in (dead, mine, old, young, other):
        p.write_bytes(b"partial")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    write_atomic(tmp_path / "x.pt2", b"new")
    assert listing(tmp_path) == sorted(p.name for p in (mine, young, other)) + ["x.pt2"]
    assert remove_stale_temps(tmp_path / "x.pt2") == []


def test_kill_during_compile_leaves_no_temp_file(tmp_path):
    (tmp_path / "out.pt2").write_bytes(b"previous")
    for delay in (1.0, 2.5, 4.0):
        proc = subprocess.Popen([sys.executable, "-m", "graphres", "compile", str(SPEC), "-o", "out.pt2"],
                                cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        names = listing(tmp_path)
        assert names == ["out.pt2"], names
        data = (tmp_path / "out.pt2").read_bytes()
        assert data == b"previous" or data[:4] == b"PK\x03\x04"  # never torn: the old file or a whole new one


def test_two_compiles_are_byte_identical(tmp_path):
    for name in ("a.pt2", "b.pt2"):
        r = run_cli("compile", SPEC, *SMALL, "-o", name, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    a, b = (tmp_path / "a.pt2").read_bytes(), (tmp_path / "b.pt2").read_bytes()
    assert a == b
    assert b"/a/" not in a[:4096] and listing(tmp_path) == ["a.pt2", "b.pt2"]


def test_two_compiles_with_a_checkpoint_are_byte_identical(tmp_path):
    import torch

    import graphres
    from graphres.backends.export import seeded
    with seeded(5):
        sd = graphres.build(str(SPEC)).state_dict()
    torch.save(sd, tmp_path / "w.pth")
    for name in ("a.pt2", "b.pt2"):
        r = run_cli("compile", SPEC, *SMALL, "--checkpoint", "w.pth", "-o", name, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    assert (tmp_path / "a.pt2").read_bytes() == (tmp_path / "b.pt2").read_bytes()
    program = torch.export.load(str(tmp_path / "a.pt2"))
    assert torch.equal(program.state_dict["conv1.weight"], sd["conv1.weight"])


def test_names_too_long_for_the_system(tmp_path):
    long = "x" * 300
    r = run_cli("expand", SPEC, "-o", f"{long}/{long}.yaml", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (1, f"graphres: error: cannot write '{long}/{long}.yaml': file name too long\n")
    r = run_cli("validate", f"{long}.yaml", cwd=tmp_path)
    assert (r.returncode, r.stderr) == (2, f"graphres: error: spec file '{long}.yaml' not found\n")
    (tmp_path / "spec.yaml").write_text(f"_base_: {long}.yaml\ngraphres: 1\n")
    r = run_cli("validate", "spec.yaml", cwd=tmp_path)
    assert r.returncode == 1
    assert r.stderr.splitlines()[0] == f"spec.yaml:1:9: error[E005]: _base_ '{long}.yaml' cannot be read: File name too long"
    assert listing(tmp_path) == ["spec.yaml"]
