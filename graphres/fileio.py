"""Output files, shared by the backends and the CLI: written atomically (stdlib only).

Every file graphres writes is complete or absent: the bytes go to a temporary file beside the
target, which is renamed over the target only when complete, so an error (a full disk, a kill)
never leaves a partial file and the previous file stays intact. The temporary file is created
without a name where the system allows it (Linux ``O_TMPFILE``: a killed process leaves nothing)
and named ``.NAME.PID.XXXXXXXX.tmp`` otherwise; such names whose process is gone are removed on the
next write of the same target. The file gets the usual permissions (0666 less the umask).
Missing parent directories are created. Every operating-system error becomes an
:class:`OutputError` with a one-line message.
"""
from __future__ import annotations

import errno
import os
import re
import tempfile
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator

from .diagnostics import GraphresError

_OLD_TEMP_AGE = 3600  # seconds; temporary files of the naming before the process id was in it


class OutputError(GraphresError, OSError):
    """An output file cannot be written; the message names the file and the reason."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def _reason(output: Path, e: OSError | ValueError) -> str:
    if not isinstance(e, OSError):
        return f"cannot write '{output}': {e}"
    if e.errno == errno.ENOSPC:
        why = "no space left on the device"
    elif e.errno in (errno.ENOTDIR, errno.EEXIST) and not _is_dir(output.parent):
        blocker = next((p for p in output.parents if _exists(p) and not _is_dir(p)), output.parent)
        why = f"'{blocker}' is a file, not a directory"
    elif e.errno == errno.EISDIR or _is_dir(output):
        why = "it is a directory"
    else:
        why = e.strerror or str(e)
        why = why[0].lower() + why[1:] if why else "unknown error"
    return f"cannot write '{output}': {why}"


def check_output(output: str | Path) -> None:
    """Fail early (before a long compile) when ``output`` is a directory or lies under a file."""
    output = Path(output)
    try:
        if output.is_dir():
            raise OutputError(errno.EISDIR, f"cannot write '{output}': it is a directory")
        blocker = next((p for p in output.parents if p.exists() and not p.is_dir()), None)
    except OutputError:
        raise
    except (OSError, ValueError) as e:
        raise OutputError(getattr(e, "errno", None) or errno.EINVAL, _reason(output, e)) from None
    if blocker is not None:
        raise OutputError(errno.ENOTDIR, f"cannot write '{output}': '{blocker}' is a file, not a directory")


def _prepare(output: Path) -> None:
    check_output(output)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as e:
        raise OutputError(getattr(e, "errno", None) or errno.EINVAL, _reason(output, e)) from None
    remove_stale_temps(output)


def remove_stale_temps(output: str | Path) -> list[Path]:
    """Remove temporary files of ``output`` left by graphres processes that no longer run."""
    output = Path(output)
    pattern = re.compile(rf"^\.{re.escape(output.name)}\.(?:(\d+)\.)?[A-Za-z0-9_]{{8}}\.tmp(?:\.\w+)?$")
    removed = []
    try:
        names = os.listdir(output.parent)
    except OSError:
        return removed
    for name in names:
        m = pattern.match(name)
        if not m:
            continue
        path = output.parent / name
        if m.group(1):
            if _alive(int(m.group(1))):
                continue
        else:  # an old-style name: no process id to ask, so only when clearly abandoned
            with suppress(OSError):
                if time.time() - path.stat().st_mtime < _OLD_TEMP_AGE:
                    continue
        with suppress(OSError):
            path.unlink()
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


def _mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(output: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``output``, on error it is removed."""
    output = Path(output)
    _prepare(output)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.{os.getpid()}.", suffix=suffix, dir=output.parent)
        os.close(fd)
    except OSError as e:
        raise OutputError(e.errno, _reason(output, e)) from None
    try:
        yield Path(tmp)
        os.chmod(tmp, _mode())
        os.replace(tmp, output)
    except OSError as e:
        if isinstance(e, OutputError):
            raise
        raise OutputError(e.errno, _reason(output, e)) from None
    finally:
        with suppress(OSError):
            os.unlink(tmp)


def write_atomic(output: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``output`` atomically; raise :class:`OutputError` on any system error."""
    output = Path(output)
    _prepare(output)
    try:
        if not _write_unnamed(output, data):
            with atomic_path(output) as tmp:
                fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC)
                try:
                    _write_all(fd, data)
                finally:
                    os.close(fd)
    except OSError as e:
        if isinstance(e, OutputError):
            raise
        raise OutputError(e.errno, _reason(output, e)) from None
    return output


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _write_unnamed(output: Path, data: bytes) -> bool:
    """Write through an unnamed temporary file (O_TMPFILE), then give it a name and rename it over
    ``output``; False where the system or the file system cannot (the caller then uses a named one)."""
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None or not os.path.isdir("/proc/self/fd"):
        return False
    try:
        fd = os.open(output.parent, flag | os.O_WRONLY, _mode())
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
            return False
        raise
    tmp = None
    dir_fd = None
    try:
        _write_all(fd, data)
        name = f".{output.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
        dir_fd = os.open(output.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:  # a dir_fd makes os.link use linkat, which follows the /proc link to the open file
            os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dir_fd, follow_symlinks=True)
        except OSError as e:
            if e.errno in (errno.EXDEV, errno.EPERM, errno.ENOENT, errno.EOPNOTSUPP, errno.EINVAL):
                return False
            raise
        tmp = output.parent / name
        os.replace(tmp, output)
        tmp = None
    finally:
        os.close(fd)
        if dir_fd is not None:
            os.close(dir_fd)
        if tmp is not None:
            with suppress(OSError):
                os.unlink(tmp)
    return True
