"""Output files, shared by the backends and the CLI: written atomically (stdlib only).

Every file graphres writes goes to a temporary file beside the target, gets the usual permissions
(0666 less the umask, not mkstemp's 0600), and is renamed over the target only when complete, so an
error never leaves a partial file. Missing parent directories are created.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(output: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``output``, on error it is removed."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=suffix, dir=output.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_atomic(output: str | Path, data: bytes) -> Path:
    with atomic_path(output) as tmp:
        tmp.write_bytes(data)
    return Path(output)
