"""Backend: the compiled module -> a ``torch.export`` program file (``.pt2``) that runs with torch alone.

The eval-mode module is exported with dynamic batch, height and width (torch.export infers the
ranges it can prove; see ``program.range_constraints``). The same module gives the same bytes: the
sample input is drawn from a fixed seed, the archive folder is always ``archive`` (the program is
serialised in memory, not under a temporary file's random name), and the archive's serialization
id, random in torch, is replaced by one derived from the archive's contents. The file is then
written atomically (:mod:`graphres.fileio`), so a failed export or a full disk leaves the previous
file intact and no partial or temporary file behind.

With ``min_size`` (the analysis' :func:`graphres.passes.export_range.dynamic_range`), the program
states its range: ``Dim("batch", min=1)``, ``Dim("height", min=H)``, ``Dim("width", min=W)``, no
upper bound, and an input below it fails with torch's ``Guard failed: x.size()[2] >= H``.

The other exports of this backend: :func:`onnx_bytes` (``.onnx``, torch's dynamo ONNX exporter at
opset :data:`ONNX_OPSET`, dynamic batch/height/width, outputs named after the stages) and
:func:`torchscript_bytes` (``.ts``, ``torch.jit.script`` of an inference copy of the module).
"""
from __future__ import annotations

import hashlib
import io
import struct
import warnings
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from ..diagnostics import GraphresError
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


def export_module(model: nn.Module, channels: int, size: tuple[int, int],
                  min_size: tuple[int, int] | None = None) -> torch.export.ExportedProgram:
    """The eval-mode ``model`` as a torch.export program, dynamic in batch, height and width: from
    ``min_size`` up when given (the program's stated range), else the ranges torch infers."""
    model = model.eval()
    example = example_input(channels, size, min_size)
    try:
        return torch.export.export(model, example, dynamic_shapes=dynamic_shapes(min_size))
    except torch._dynamo.exc.UserError as e:
        # A ceil-mode pool (avg_down's AvgPool2d) leaves a guard torch cannot prove symbolically,
        # though it holds for every size ((out - 1) * stride < in); such guards become checks at run
        # time, with the range still stated.
        if min_size is None or "Constraints violated" not in str(e):
            raise
        return torch.export.export(model, example, dynamic_shapes=dynamic_shapes(min_size, hinted=True))


def example_input(channels: int, size: tuple[int, int], min_size: tuple[int, int] | None = None) -> tuple:
    """The sample the exports trace: batch 2 (a batch of 1 would be specialised), at ``size`` or,
    when that is below the dynamic range, at its smallest size; drawn from a fixed seed."""
    if min_size is not None:
        size = (max(size[0], min_size[0]), max(size[1], min_size[1]))
    generator = torch.Generator().manual_seed(SEED)
    return (torch.randn(2, channels, *size, generator=generator),)


def dynamic_shapes(min_size: tuple[int, int] | None, hinted: bool = False) -> tuple:
    """torch.export's dynamic_shapes for the one input: batch from 1, height and width from
    ``min_size`` (``Dim.AUTO`` for each without it), no upper bound. ``hinted``: height and width as
    ``Dim.AUTO(min=...)``, which turns the guards torch cannot prove into checks at run time."""
    dim = torch.export.Dim
    if min_size is None:
        return ({0: dim.AUTO, 2: dim.AUTO, 3: dim.AUTO},)
    if hinted:
        return ({0: dim("batch", min=1), 2: dim.AUTO(min=min_size[0]), 3: dim.AUTO(min=min_size[1])},)
    return ({0: dim("batch", min=1), 2: dim("height", min=min_size[0]), 3: dim("width", min=min_size[1])},)


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


# -- ONNX -------------------------------------------------------------------------------------------

ONNX_OPSET = 18  # the dynamo exporter's own opset in torch 2.13; onnxruntime 1.17 and later run it
ONNX_INPUT = "input"
_PROTOBUF_LIMIT = 2 ** 31 - 1  # a protobuf message, hence a single-file ONNX model, is at most 2 GiB


class ExportError(GraphresError, RuntimeError):
    """An export that cannot be made; the message says why and what to use instead."""


def output_names(model: nn.Module) -> list[str]:
    """The ONNX output names: ``logits`` for a classifier, else the out_indices stages' module
    names (``layer1`` ... ``layer4``), ``out0`` ... where the module does not say."""
    if getattr(model, "num_classes", None) is not None:
        return ["logits"]
    info = getattr(model, "feature_info", None)
    names = info.module_names() if info else []
    return list(names) if names and len(set(names)) == len(names) else [f"out{i}" for i in range(len(names) or 1)]


def onnx_bytes(model: nn.Module, channels: int, size: tuple[int, int], min_size: tuple[int, int] | None,
               names: list[str] | None = None) -> bytes:
    """The eval-mode ``model`` as an ONNX model (opset :data:`ONNX_OPSET`) with the input ``input``
    of dynamic axes ``batch``, ``height`` and ``width``, and the outputs ``names``."""
    import logging

    try:
        import onnx  # noqa: F401  (the exporter needs onnx and onnxscript)
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ExportError(f"an .onnx export needs the onnx and onnxscript packages ({e}): "
                          f"pip install 'graphres[onnx]'") from None
    model = model.eval()
    names = names or output_names(model)
    quiet = logging.getLogger("torch.onnx")  # "torchvision is not installed. Skipping torchvision::nms" x4
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's own pytree deprecation, in the exporter
            exported = export_module(model, channels, size, min_size)
            program = torch.onnx.export(exported, opset_version=ONNX_OPSET, input_names=[ONNX_INPUT],
                                        output_names=names, verbose=False, optimize=True, dynamo=True)
    finally:
        quiet.setLevel(level)
    proto = program.model_proto
    _name_axes(proto)
    if proto.ByteSize() > _PROTOBUF_LIMIT:
        raise ExportError(f"the ONNX model would be {proto.ByteSize():,} bytes, over protobuf's limit of 2 GiB for "
                          f"one file; export a .pt2 or .ts instead")
    return proto.SerializeToString(deterministic=True)


# -- TorchScript ------------------------------------------------------------------------------------

def scriptable_copy(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """An eval-mode copy of ``model`` that ``torch.jit.script`` compiles, and notes on what changed.

    Two things of a training module are not scriptable and do nothing in inference: activation
    checkpointing (``with_cp``: ``torch.utils.checkpoint`` in the block's forward, used only when the
    input needs a gradient), so each such block runs its body directly; and SyncBN, which reads
    ``torch.distributed`` in training, so each SyncBatchNorm becomes the BatchNorm2d it is in eval
    mode (same state-dict keys and values)."""
    import copy

    model = copy.deepcopy(model).eval()
    notes = []
    blocks = [m for m in model.modules() if getattr(type(m), "with_cp", False) and hasattr(m, "_body")]
    for block in blocks:
        block.forward = block._body
    if blocks:
        notes.append(f"with_cp: the {len(blocks)} blocks run without activation checkpointing (it only saves "
                     f"memory in training)")
    converted = _sync_bn_to_bn(model)
    if converted:
        notes.append(f"SyncBN: the {converted} SyncBatchNorm layers are saved as BatchNorm2d (what they compute "
                     f"in eval mode)")
    return model, notes


def _sync_bn_to_bn(module: nn.Module) -> int:
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.SyncBatchNorm):
            bn = nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                child.track_running_stats)
            bn.load_state_dict(child.state_dict())
            for p, q in zip(bn.parameters(), child.parameters()):
                p.requires_grad = q.requires_grad
            bn.train(child.training)
            setattr(module, name, bn)
            count += 1
        else:
            count += _sync_bn_to_bn(child)
    return count


def torchscript_bytes(model: nn.Module) -> tuple[bytes, list[str]]:
    """The ``torch.jit.save`` archive of the scripted eval-mode ``model`` (see
    :func:`scriptable_copy`), and the notes on what the copy changed."""
    copy_, notes = scriptable_copy(model)
    try:
        scripted = torch.jit.script(copy_)
    except Exception as e:  # torch.jit.frontend.* and RuntimeError, with TorchScript's located message
        raise ExportError(f"TorchScript cannot compile this network: {str(e).strip()}\n"
                          f"export a .pt2 (torch.export) or .onnx instead") from None
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    return buffer.getvalue(), notes


def _name_axes(proto) -> None:
    """Name the input's dynamic axes ``batch``, ``height`` and ``width`` (the exported program's
    symbols otherwise, such as ``s53``) everywhere a shape mentions them."""
    import re

    dims = proto.graph.input[0].type.tensor_type.shape.dim
    names = {dims[i].dim_param: new for i, new in ((0, "batch"), (2, "height"), (3, "width"))
             if dims[i].dim_param and dims[i].dim_param != new}
    if not names:
        return
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
    for value in list(proto.graph.input) + list(proto.graph.output) + list(proto.graph.value_info):
        for d in value.type.tensor_type.shape.dim:
            if d.dim_param:
                d.dim_param = pattern.sub(lambda m: names[m.group(1)], d.dim_param)
