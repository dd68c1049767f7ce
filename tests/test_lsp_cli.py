"""graphres lsp without its optional dependency: a clear message, exit code 1."""
import subprocess
import sys

from conftest import ROOT


def test_lsp_without_pygls_says_what_to_install():
    code = ("import sys; sys.modules['pygls'] = None; sys.modules['lsprotocol'] = None\n"
            "from graphres.cli import main; sys.exit(main(['lsp']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 1
    assert out.stdout == ""
    assert out.stderr.startswith("graphres: error: graphres lsp needs pygls (")
    assert out.stderr.endswith("): pip install 'graphres[lsp]'\n")
