"""Parse stage, output: a checked :class:`Spec` -> its canonical explicit form as plain data.

This is what ``graphres expand`` prints: every default filled in, the shorthand expanded and
``block_args`` folded into the stages, so two specs that mean the same network expand to the same
document.
"""
from __future__ import annotations

from typing import Any

from .model import FORMAT_VERSION, Spec


def to_explicit(spec: Spec, resolved: list[dict] | None = None) -> dict[str, Any]:
    """The explicit form of ``spec``. ``resolved`` (one ``{"stride", "dilations"}`` per stage, from
    lowering: see :meth:`graphres.pipeline.Compiled.explicit`) gives the strides and dilations the
    network runs with, after an ``output_stride`` trade."""
    norm = {k: v for k, v in spec.norm.items()}
    stem = {"type": spec.stem_block, **{k: a.value for k, a in sorted(spec.stem_args.items())}}
    stages = []
    for st in spec.stages:
        res = resolved[st.index] if resolved and st.index < len(resolved) else None
        params: dict = {}
        for name in st.block_types:
            for k, p in spec.blocks[name].params.items():
                params.setdefault(k, p)
        entry: dict[str, Any] = {"block": list(st.types) if st.types else st.block, "blocks": st.blocks}
        args = {k: a.value for k, a in st.args.items()}
        for key in ("planes", "stride"):
            if key in params:
                entry[key] = args.pop(key, params[key].default)
        if res is not None and res.get("stride") is not None and "stride" in params:
            entry["stride"] = res["stride"]
        dilations = list(res["dilations"]) if res is not None else list(st.dilations)
        if "dilation" in params:
            entry["dilation"] = dilations[0] if len(set(dilations)) == 1 else dilations
        # other arguments only where they differ from the block's default, so equal networks
        # expand to equal documents
        entry.update(sorted((k, v) for k, v in args.items() if v != params[k].default))
        entry.update(sorted((k, [a.value for a in values]) for k, values in st.per_block.items()))
        if st.frozen:
            entry["frozen"] = True
        if st.plugins:
            entry["plugins"] = [_plugin(p) for p in st.plugins]
            if st.plugin_mode != "chain":
                entry["plugin_mode"] = st.plugin_mode
        stages.append(entry)
    out: dict[str, Any] = {
        "graphres": FORMAT_VERSION,
        "name": spec.name,
        "input": {"channels": spec.input_channels, "size": list(spec.input_size)},
        "norm": norm,
        "conv": dict(spec.conv),
        "act": {"type": spec.act},
        "stem": stem,
        "stages": stages,
        "out_indices": list(spec.out_indices),
        "frozen_stages": spec.frozen_stages,
        "norm_eval": spec.norm_eval,
        "zero_init_residual": spec.zero_init_residual,
        "with_cp": spec.with_cp,
    }
    if spec.output_stride is not None:
        # with ``resolved``, the stages above carry the traded strides and dilations; the
        # declaration stays as a check that re-reading this document confirms
        out["output_stride"] = spec.output_stride
    if spec.head is not None:
        out["head"] = dict(spec.head)
    if spec.init and spec.init["type"] == "list":
        out["init"] = [{k: v for k, v in item.items() if k != "span"} for item in spec.init["items"]]
    elif spec.init:
        out["init"] = {"type": spec.init["type"], "checkpoint": spec.init["checkpoint"]}
        if "prefix" in spec.init:
            out["init"]["prefix"] = spec.init["prefix"]
    user_blocks = {name: spec.doc.data["blocks"][name] for name, b in spec.blocks.items() if not b.builtin}
    if user_blocks:
        out["blocks"] = user_blocks
    return out


def _plugin(p) -> dict[str, Any]:
    """A stage plugin as written (its literal string arguments were stored as Python literals)."""
    args = {k: (v[1:-1] if isinstance(v, str) and len(v) >= 2 and v[0] == v[-1] == "'" else v)
            for k, v in p.layer.attrs.items()}
    return {"position": p.position, "block": p.layer.block, "name": p.layer.name, **args}
