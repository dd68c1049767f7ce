"""Backend: the compiled module -> a ``torch.export`` program file (``.pt2``) that runs with torch alone.

The eval-mode module is exported with dynamic batch, height and width (torch.export infers the
ranges it can prove; see ``program.range_constraints``). The same module gives the same bytes: the
sample input is drawn from a fixed seed, the archive folder is always ``archive`` (the program is
serialised in memory, not under a temporary file's random name), and the archive's serialization
id, random in torch, is replaced by one derived from the archive's contents. The file is then
written atomically (:mod:`graphres.fileio`), so a failed export or a full disk leaves the previous
file intact and no partial or temporary file behind.
"""
from __future__ import annotations

import hashlib
import io
import struct
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from ..fileio import write_atomic

SEED = 0  # of the sample input, and of the initial weights under :func:`seeded`
_ID_RECORD = ".data/serialization_id"


@contextmanager
def seeded(seed: int = SEED) -> Iterator[None]:
    """Run the block with torch's global generator seeded, restoring its state afterwards (so that
    a compile initialises the same weights every time)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def export_module(model: nn.Module, channels: int, size: tuple[int, int]) -> torch.export.ExportedProgram:
    model = model.eval()
    generator = torch.Generator().manual_seed(SEED)
    example = (torch.randn(2, channels, *size, generator=generator),)
    auto = torch.export.Dim.AUTO
    return torch.export.export(model, example, dynamic_shapes=({0: auto, 2: auto, 3: auto},))


def program_bytes(program: torch.export.ExportedProgram) -> bytes:
    """The ``.pt2`` archive of ``program``, byte-identical for the same program."""
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return _fix_serialization_id(bytearray(buffer.getvalue()))


def save_program(program: torch.export.ExportedProgram, output: str | Path) -> Path:
    return write_atomic(output, program_bytes(program))


def _fix_serialization_id(data: bytearray) -> bytes:
    return bytes(_canonical_archive(data))


def _canonical_archive(data: bytearray) -> bytearray:
    """Overwrite the archive's random serialization id (a stored record of fixed length) with digits
    derived from the other records, also inside archives stored in it (the sample inputs are a
    ``torch.save`` archive of their own), and update the CRCs that cover what changed."""
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as z:
        infos = [i for i in z.infolist() if i.compress_type == zipfile.ZIP_STORED]
        start_dir = z.start_dir
    ident = None
    digest = hashlib.sha256()
    for info in infos:
        offset = _data_offset(data, info)
        content = data[offset:offset + info.file_size]
        if info.filename == _ID_RECORD or info.filename.endswith("/" + _ID_RECORD):
            ident = (info, offset)
            continue
        if content[:4] == b"PK\x03\x04":
            try:
                fixed = _canonical_archive(bytearray(content))
            except (zipfile.BadZipFile, ValueError, struct.error):
                fixed = content
            if fixed != content:
                data[offset:offset + info.file_size] = fixed
                _set_crc(data, info, offset, start_dir, zlib.crc32(fixed))
                content = fixed
        digest.update(info.filename.encode() + struct.pack("<I", zlib.crc32(content)))
    if ident is not None:
        info, offset = ident
        new_id = str(int.from_bytes(digest.digest(), "big")).zfill(info.file_size)[:info.file_size].encode()
        data[offset:offset + info.file_size] = new_id
        _set_crc(data, info, offset, start_dir, zlib.crc32(new_id))
    return data


def _data_offset(data: bytearray, info: zipfile.ZipInfo) -> int:
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    return info.header_offset + 30 + name_len + extra_len


def _set_crc(data: bytearray, info: zipfile.ZipInfo, offset: int, start_dir: int, crc: int) -> None:
    """Write ``crc`` wherever the archive records this member's CRC: the local header (unless it
    defers to a data descriptor), the data descriptor, and the central directory."""
    old = info.CRC
    if struct.unpack_from("<I", data, info.header_offset + 14)[0] == old:
        struct.pack_into("<I", data, info.header_offset + 14, crc)
    end = offset + info.file_size
    if data[end:end + 4] == b"PK\x07\x08":
        struct.pack_into("<I", data, end + 4, crc)
    elif len(data) >= end + 4 and struct.unpack_from("<I", data, end)[0] == old:
        struct.pack_into("<I", data, end, crc)
    name = info.filename.encode()
    pos = data.find(b"PK\x01\x02", start_dir)
    while pos != -1:
        name_len = struct.unpack_from("<H", data, pos + 28)[0]
        if data[pos + 46:pos + 46 + name_len] == name:
            struct.pack_into("<I", data, pos + 16, crc)
            return
        pos = data.find(b"PK\x01\x02", pos + 4)
