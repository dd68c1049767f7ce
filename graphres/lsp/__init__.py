"""Language server (``graphres lsp``): diagnostics, hover, completion, go to definition and the
stage table for spec files, over stdio. Built on pygls (the optional ``lsp`` extra); never imports
torch. :mod:`.document` answers the questions, :mod:`.server` speaks the protocol.
"""
from __future__ import annotations


def serve() -> None:
    from .server import serve as run
    run()
