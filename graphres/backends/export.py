"""Backend: the compiled module -> a ``torch.export`` program file (``.pt2``) that runs with torch alone.

The eval-mode module is exported with dynamic batch, height and width (torch.export infers the
ranges it can prove; see ``program.range_constraints``); the file is written atomically
(a temporary file beside the target, then a rename), so a failed export leaves nothing behind.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..fileio import atomic_path


def export_module(model: nn.Module, channels: int, size: tuple[int, int]) -> torch.export.ExportedProgram:
    model = model.eval()
    example = (torch.randn(2, channels, *size),)
    auto = torch.export.Dim.AUTO
    return torch.export.export(model, example, dynamic_shapes=({0: auto, 2: auto, 3: auto},))


def save_program(program: torch.export.ExportedProgram, output: str | Path) -> Path:
    with atomic_path(output, suffix=".tmp.pt2") as tmp:  # torch.export.save wants a .pt2 name
        torch.export.save(program, tmp)
    return Path(output)
