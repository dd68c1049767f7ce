"""Backend: the compiled module -> a ``torch.export`` program file (``.pt2``) that runs with torch alone.

The eval-mode module is exported with dynamic batch, height and width (torch.export infers the
ranges it can prove; see ``program.range_constraints``); the file is written atomically
(a temporary file beside the target, then a rename), so a failed export leaves nothing behind.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import nn


def export_module(model: nn.Module, channels: int, size: tuple[int, int]) -> torch.export.ExportedProgram:
    model = model.eval()
    example = (torch.randn(2, channels, *size),)
    auto = torch.export.Dim.AUTO
    return torch.export.export(model, example, dynamic_shapes=({0: auto, 2: auto, 3: auto},))


def save_program(program: torch.export.ExportedProgram, output: str | Path) -> Path:
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp.pt2", dir=output.parent)
    os.close(fd)
    try:
        torch.export.save(program, tmp)
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return output
