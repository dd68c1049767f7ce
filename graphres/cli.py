"""Command line: ``graphres validate | info | expand | render | compile | diff | import | weights | schema | lsp``.

Exit codes: 0 success, 1 errors in the spec (or a checkpoint / Graphviz problem), 2 usage errors.
``diff`` follows diff(1) instead: 0 identical, 1 different, 2 trouble (usage or spec errors).
Only ``compile`` to ``.pt2``, ``.onnx`` or ``.ts`` and ``weights`` import torch; the other commands (``compile -o model.py`` too) start
without it.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from . import __version__
from .diagnostics import GraphresError, SpecError, diagnostics_json, format_diagnostics, use_color
from .fileio import check_output, write_atomic

EXIT_OK, EXIT_SPEC, EXIT_USAGE = 0, 1, 2


class _Usage(Exception):
    pass


def parse_input_size(text: str) -> list[str]:
    """``--input`` as ``--set`` overrides: ``3x512x512`` (channels x height x width), ``512x640``
    (height x width) or ``512`` (square)."""
    parts = text.lower().replace("\u00d7", "x").split("x")
    if not 1 <= len(parts) <= 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise _Usage(f"--input '{text}' must look like CxHxW, HxW or S with positive integers, e.g. 3x512x512")
    nums = [int(p) for p in parts]
    if len(nums) == 1:
        nums = nums * 2
    out = [f"input.size=[{nums[-2]}, {nums[-1]}]"]
    if len(nums) == 3:
        out.append(f"input.channels={nums[0]}")
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="graphres", description="A declarative model-graph compiler for "
                                "ResNet-style backbones: validate, expand, render and compile YAML specs.")
    p.add_argument("--version", action="version", version=f"graphres {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def command(name: str, help: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help, description=help)
        c.add_argument("spec", help="the spec file (YAML)")
        c.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a value, e.g. --set stages.3.dilation=2 (repeatable; VALUE is YAML)")
        return c

    v = command("validate", "check a spec and report every problem with its file:line:col")
    v.add_argument("--strict", action="store_true", help="treat warnings as errors")
    v.add_argument("--json", action="store_true", help="print the diagnostics as JSON")
    i = command("info", "print shapes, strides, dilations, receptive fields, parameters and MACs, "
                        "computed from the spec alone")
    i.add_argument("--level", choices=("stage", "block", "layer"), default="stage",
                   help="one row per stage (default), per block instance, or per layer")
    i.add_argument("--input", metavar="CxHxW", help="analyse for this input size instead of the spec's "
                   "(3x512x512, 512x512 or 512)")
    i.add_argument("--json", action="store_true", help="print the report as JSON (keys in docs/cli.md)")
    i.add_argument("--strict", action="store_true", help="treat warnings as errors")
    e = command("expand", "print the fully resolved explicit form of a spec, as YAML")
    e.add_argument("-o", "--output", help="write to this file instead of standard output")
    r = command("render", "draw the spec with Graphviz (svg, png, pdf or dot)")
    r.add_argument("-o", "--output", required=True, help="output file; its extension picks the format")
    r.add_argument("--format", choices=("svg", "png", "pdf", "dot"), help="override the format")
    r.add_argument("--level", choices=("stage", "block", "layer"), default="block",
                   help="detail: one box per stage, per block (default) or per layer")
    r.add_argument("--expand", action="append", default=[], metavar="STAGE",
                   help="do not fold the identical blocks of this stage (e.g. layer3; repeatable, "
                        "comma-separated, or 'all')")
    r.add_argument("--input", metavar="CxHxW", help="draw the shapes for this input size instead of the spec's "
                   "(3x512x512, 512x512 or 512)")
    r.add_argument("--rankdir", choices=("TB", "LR"), default="TB", help="top-to-bottom or left-to-right")
    r.add_argument("--theme", choices=("light", "dark"), default="light", help="colours (default: light)")
    r.add_argument("--no-legend", dest="legend", action="store_false", help="leave out the legend")
    c = command("compile", "compile to a file that runs without graphres, by the output's extension: a "
                           "torch.export program (.pt2), an ONNX model (.onnx), TorchScript (.ts) or "
                           "standalone Python source (.py)")
    c.add_argument("-o", "--output", required=True, help="output file: .pt2, .onnx, .ts or .py")
    c.add_argument("--checkpoint", help="load these weights first (torchvision or OpenMMLab layout)")
    c.add_argument("--inference", action="store_true",
                   help="the eval-only inference build: BatchNorm/SyncBN/FrozenBN folded into the convs "
                        "(docs/inference.md); applies to .pt2, .onnx, .ts and .py")
    d = sub.add_parser("diff", help="compare the architectures of two specs, for code review",
                       description="compare the architectures of two specs, stage by stage (--level layer: "
                                   "by state-dict name, with whether a checkpoint of A loads into B); exit 0 "
                                   "when identical, 1 when different, 2 on usage or spec errors")
    d.add_argument("spec_a", metavar="A", help="the old spec (YAML)")
    d.add_argument("spec_b", metavar="B", help="the new spec (YAML)")
    d.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value in both specs (repeatable; VALUE is YAML)")
    d.add_argument("--set-a", dest="overrides_a", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value in A only (repeatable)")
    d.add_argument("--set-b", dest="overrides_b", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value in B only (repeatable)")
    d.add_argument("--input", metavar="CxHxW", help="compare both at this input size (3x512x512, 512x512 or 512)")
    d.add_argument("--level", choices=("stage", "layer"), default="stage",
                   help="stage rows only (default), or also every added, removed and changed layer")
    d.add_argument("--json", action="store_true", help="print the comparison as JSON (keys in docs/cli.md)")
    m = sub.add_parser("import", help="turn an mmdetection/mmsegmentation Python config into a spec, "
                                      "without running it",
                       description="read an OpenMMLab Python config (and its _base_ files) with Python's ast, "
                                   "never running it, and write model.backbone as a shorthand spec")
    m.add_argument("config", help="the Python config file (CONFIG.py)")
    m.add_argument("-o", "--output", help="write the spec to this file instead of standard output")
    w = sub.add_parser("weights", help="preview how a checkpoint's keys map onto a spec (or convert it)",
                       description="read a checkpoint (torchvision, OpenMMLab, timm, detectron2; .pth, .safetensors, "
                                   ".pkl; or a model-zoo name such as torchvision://resnet50) and show the layout "
                                   "detected and the keys mapped, ignored, missing, unexpected and mismatched; exit 0 "
                                   "when it loads, 1 when it does not")
    w.add_argument("checkpoint", help="the checkpoint file, or a model-zoo name read from torch.hub's cache")
    w.add_argument("spec", help="the spec file (YAML)")
    w.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value in the spec (repeatable; VALUE is YAML)")
    w.add_argument("--prefix", help="load only the keys under this prefix (init_cfg.prefix), e.g. backbone.")
    w.add_argument("--convert-to", choices=("torchvision", "mmdet", "timm", "detectron2"),
                   help="write the mapped weights in this layout (needs -o)")
    w.add_argument("-o", "--output", help="the converted checkpoint (.pth), written atomically")
    w.add_argument("--json", action="store_true", help="print the preview as JSON")
    s = sub.add_parser("schema", help="print the JSON Schema of the spec language (for YAML editors)",
                       description="print the JSON Schema (draft 2020-12) of the spec language")
    s.add_argument("-o", "--output", help="write to this file instead of standard output")
    s.add_argument("--partial", action="store_true",
                   help="require no key anywhere (for files used only as a _base_)")
    s.add_argument("--draft", choices=("2020-12", "7"), default="2020-12",
                   help="JSON Schema draft (default 2020-12; 7 for YAML language servers that read draft 7 only)")
    ls = sub.add_parser("list", help="list the specs shipped with graphres, which can be named where a SPEC "
                                     "path goes (graphres info resnet50)",
                        description="list the shipped specs with their parameters, MACs at 224x224 and output "
                                    "stride, computed from the specs alone (no torch)")
    ls.add_argument("--json", action="store_true", help="print the list as JSON (keys in docs/cli.md)")
    sub.add_parser("lsp", help="run the language server on standard input and output (needs graphres[lsp])",
                   description="run the graphres language server over stdio (needs the 'lsp' extra: pygls)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        for attr, what in (("spec", "spec"), ("spec_a", "spec"), ("spec_b", "spec"), ("config", "config")):
            if hasattr(args, attr) and not _is_file(getattr(args, attr)):
                _check_spec_name(getattr(args, attr), what)
        commands = {"validate": _validate, "info": _info, "expand": _expand, "render": _render, "compile": _compile,
                    "diff": _diff, "import": _import, "weights": _weights, "schema": _schema, "list": _list, "lsp": _lsp}
        return commands[args.command](args)
    except _Usage as e:
        parser.exit(EXIT_USAGE, f"graphres: error: {e}\n")
    except SpecError as e:
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, **diagnostics_json(e.diagnostics)}, indent=2))
        else:
            print(e.render(color=use_color(sys.stderr)), file=sys.stderr)
        return EXIT_SPEC
    except GraphresError as e:
        print(f"graphres: error: {e}", file=sys.stderr)
        return EXIT_SPEC
    except BrokenPipeError:  # e.g. `graphres expand spec.yaml | head`
        sys.stderr.close()
        return EXIT_OK
    return EXIT_OK


def _is_file(path: str) -> bool:
    try:
        return Path(path).is_file()
    except (OSError, ValueError):  # a name too long for the system, a NUL byte
        return False


def _check_spec_name(text: str, what: str) -> None:
    """A SPEC argument that is no file may name a shipped spec (``graphres validate resnet50``)."""
    from .spec.names import is_name, resolve_name, unknown_name_hint
    try:
        found = what == "spec" and resolve_name(text, Path(".")) is not None
        exists = Path(text).exists()
    except (OSError, ValueError):  # a name too long for the system, a NUL byte
        found = exists = False
    if not found:
        extra = ""
        if what == "spec" and not exists:
            hint = unknown_name_hint(text)
            if is_name(text):
                extra = f", and no shipped spec has that name; {hint}"
            elif hint.startswith("the shipped spec"):  # resnet50.yaml where there is none
                extra = f"; {hint}"
        raise _Usage(f"{what} file '{text}' not found{extra}")


def _compile_spec(args: argparse.Namespace):
    from .pipeline import compile_spec
    overrides = list(args.overrides)
    if getattr(args, "input", None):
        overrides += parse_input_size(args.input)
    compiled = compile_spec(args.spec, overrides)
    if _exit.hard:
        _exit.kept.append(compiled)  # freed by the exit itself, not object by object (see entry)
    return compiled


class _exit:
    """How :func:`entry` leaves: ``hard`` once it has decided to end the process with
    ``os._exit``; ``kept``, what the command compiled, left alive until then."""
    hard = False
    kept: list = []


# one-shot commands that import no torch and leave nothing to atexit handlers
_HARD_EXIT_COMMANDS = frozenset({"validate", "info", "expand", "render", "diff", "schema", "list"})


def entry() -> None:
    """The ``graphres`` command (and ``python -m graphres``): :func:`main`, then the process ends.

    For the one-shot commands that never import torch, it ends with ``os._exit`` once stdout and
    stderr are flushed: the commands have written their files (atomically) and closed them, and
    tearing the interpreter down would only free, one object at a time, what the command built (a
    5,000-block spec's analysed graph: about 0.08 s) and every module (about 0.08 s more)."""
    argv = sys.argv[1:]
    _exit.hard = bool(argv) and argv[0] in _HARD_EXIT_COMMANDS
    code = main(argv)
    if not _exit.hard:
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (BrokenPipeError, ValueError):  # a reader gone (`graphres expand x | head`), or closed by main
            pass
    os._exit(code)


def _print_warnings(compiled) -> None:
    if compiled.warnings:
        print(format_diagnostics(compiled.warnings, compiled.sources, color=use_color(sys.stderr)), file=sys.stderr)


def _validate(args: argparse.Namespace) -> int:
    compiled = _compile_spec(args)
    if args.strict and compiled.warnings:
        raise SpecError(compiled.warnings, compiled.sources)
    g = compiled.graph
    if args.json:
        print(json.dumps({"ok": True, **diagnostics_json(compiled.warnings),
                          "params": g.graph["params"], "macs": g.graph["macs"]}, indent=2))
        return EXIT_OK
    _print_warnings(compiled)
    blocks = sum(st["blocks"] for st in g.graph["stages"])
    outs = ", ".join(f"{o['name']} ({o['channels']} ch, stride {g.nodes[o['node']]['meta']['stride']})"
                     for o in g.graph["outputs"])
    if g.graph.get("head"):  # a classifier: forward returns the logits, forward_features the stages
        outs = f"logits ({g.graph['head']['num_classes']} classes); features {outs}"
    print(f"{args.spec}: ok: {g.graph['name']}: {len(g.graph['stages'])} stages, {blocks} blocks, "
          f"{g.graph['params']:,} parameters; outputs {outs}")
    return EXIT_OK


def _info(args: argparse.Namespace) -> int:
    from .backends.info import format_info, info_dict
    compiled = _compile_spec(args)
    if args.strict and compiled.warnings:
        raise SpecError(compiled.warnings, compiled.sources)
    if args.json:
        data = info_dict(compiled.graph, args.level)
        data.update(diagnostics_json(compiled.warnings))
        print(json.dumps(data, indent=2))
        return EXIT_OK
    _print_warnings(compiled)
    print(format_info(compiled.graph, args.level, color=use_color(sys.stdout), source=compiled.spec.file))
    return EXIT_OK


def _expand(args: argparse.Namespace) -> int:
    import yaml

    compiled = _compile_spec(args)
    _print_warnings(compiled)
    text = "# expanded by graphres from " + args.spec + "\n" + yaml.safe_dump(
        compiled.explicit(), sort_keys=False, default_flow_style=None, width=100)
    if args.output:
        write_atomic(args.output, text.encode())
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _render(args: argparse.Namespace) -> int:
    from .backends.graphviz import render
    compiled = _compile_spec(args)  # with --input as overrides
    _print_warnings(compiled)
    try:
        out = render(compiled.graph, args.output, level=args.level, fmt=args.format, rankdir=args.rankdir,
                     expand=args.expand, theme=args.theme, legend=args.legend)
    except ValueError as e:  # an output name whose format cannot be told, an unknown format or stage
        raise _Usage(str(e)) from None
    print(f"wrote {out}")
    return EXIT_OK


# compile's output formats, by the output's extension
COMPILE_FORMATS = {".pt2": "a torch.export program; load it with torch.export.load",
                   ".onnx": "an ONNX model; run it with onnxruntime.InferenceSession",
                   ".ts": "a TorchScript module; load it with torch.jit.load",
                   ".py": "standalone Python source that needs torch alone; build_model() returns the network"}
# the formats that hold a built module with its weights (exported in eval mode)
_EXPORT_FORMATS = (".pt2", ".onnx", ".ts")


def _compile_format(output: str) -> str:
    suffix = Path(output).suffix.lower()
    if suffix not in COMPILE_FORMATS:
        known = ", ".join(f"{ext} ({what.split(';')[0]})" for ext, what in COMPILE_FORMATS.items())
        raise _Usage(f"cannot tell the output format of '{output}': use one of {known}")
    return suffix


def _compile(args: argparse.Namespace) -> int:
    check_output(args.output)  # a directory or an unwritable place is an output error before a format one
    fmt = _compile_format(args.output)
    if fmt == ".py" and args.checkpoint:
        raise _Usage("a .py file holds the network, not its weights: drop --checkpoint and load them with "
                     "build_model(checkpoint=...) from the generated file")
    from .passes.limits import check_memory
    compiled = _compile_spec(args)
    _print_warnings(compiled)
    check_output(args.output)  # before the minutes a large compile can take
    if fmt == ".py":
        from .backends.codegen import generate
        graph = compiled.graph
        if getattr(args, "inference", False):
            from .passes.fold import fold_for_inference
            graph = fold_for_inference(graph)
        write_atomic(args.output, generate(graph, standalone=True).source.encode())
        print(f"wrote {args.output} ({COMPILE_FORMATS[fmt]})")
        return EXIT_OK
    check_memory(compiled, "compile")  # before torch allocates anything
    import warnings

    from . import CheckpointWarning, build
    from .backends.export import export_module, save_program, seeded
    with warnings.catch_warnings(), seeded():  # seeded: the same spec compiles to the same bytes
        warnings.simplefilter("ignore", CheckpointWarning)  # printed below, without a source line
        model = build(compiled, checkpoint=args.checkpoint, inference=getattr(args, "inference", False),
                      memory_format="contiguous" if getattr(args, "inference", False) else None)
    report = getattr(model, "load_report", None)
    if report is not None:
        print(f"checkpoint: {report}")
        for message in report.warnings:
            print(f"graphres: warning: {message}", file=sys.stderr)
    out = _export(fmt, model, compiled, args.output)
    print(f"wrote {out} ({COMPILE_FORMATS[fmt]})")
    return EXIT_OK


def _export(fmt: str, model, compiled, output: str) -> Path:
    """Write ``model`` to ``output`` as ``fmt`` (one of _EXPORT_FORMATS), with the program's dynamic
    range from the analysis (passes/export_range.py): batch from 1, height and width from its minimum."""
    from .backends import export
    from .passes.export_range import dynamic_range
    spec = compiled.spec
    min_size = dynamic_range(compiled.graph)
    if min_size is None and fmt != ".ts":
        raise GraphresError(f"no input size up to 16777216x16777216 keeps every spatial size of {spec.name} at "
                            f"2 or more, which a {fmt} export with dynamic height and width needs")
    if fmt == ".pt2":
        return export.save_program(export.export_module(model, spec.input_channels, spec.input_size, min_size),
                                   output)
    if fmt == ".onnx":
        return write_atomic(output, export.onnx_bytes(model, spec.input_channels, spec.input_size, min_size))
    data, notes = export.torchscript_bytes(model)
    for note in notes:
        print(f"graphres: note: {note}", file=sys.stderr)
    return write_atomic(output, data)


def _weights(args: argparse.Namespace) -> int:
    if bool(args.convert_to) != bool(args.output):
        raise _Usage("--convert-to and -o/--output go together")
    from .backends.checkpoint import convert, preview
    compiled = _compile_spec(args)
    _print_warnings(compiled)
    result = preview(compiled.graph, args.checkpoint, args.prefix, _shipped_specs)
    plan = result.pop("plan")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"checkpoint: {result['file']} ({result['layout']} layout)")
        print(f"mapped: {result['mapped']} tensors" + (f" ({result['renamed']} renamed from {result['layout']} names)"
                                                     if result["renamed"] else ""))
        for key, label in (("ignored", "ignored (fc.* and non-backbone keys)"), ("missing", "missing in checkpoint"),
                           ("unexpected", "unexpected in checkpoint"), ("mismatched", "shape mismatch")):
            items = result[key]
            print(f"{label}: {len(items)}")
            for item in items[:20]:
                print(f"  {item}")
            if len(items) > 20:
                print(f"  ... ({len(items) - 20} more)")
        print("result: " + ("loads into the spec" if result["fits"] else "does not load into the spec"))
        if result["layout"] == "detectron2" and _style_of(compiled) == "pytorch":
            print("note: detectron2's ImageNet and COCO ResNets put the stride in the 1x1 conv (stride_in_1x1, "
                  "caffe style) and this spec does not: the keys match, the numerics only if the checkpoint was "
                  "trained with stride_in_1x1 false (else set style: caffe)")
        if result["fits_instead"]:
            print(f"hint: it fits {', '.join(result['fits_instead'])}")
    if not result["fits"]:
        return EXIT_SPEC
    if args.convert_to:
        import torch
        out = convert(plan, args.convert_to, any(k.startswith("stem.") for k in plan.sd))
        check_output(args.output)
        buffer = io.BytesIO()
        torch.save(out, buffer)
        write_atomic(args.output, buffer.getvalue())
        print(f"wrote {args.output} ({args.convert_to} layout)")
    return EXIT_OK


def _style_of(compiled) -> str | None:
    from . import _style_of as style_of
    return style_of(compiled)


def _shipped_specs() -> dict:
    """The shipped specs (the package's, else the source tree's specs/), compiled: name -> graph."""
    from .pipeline import compile_spec
    here = Path(__file__).resolve().parent
    out = {}
    for folder in (here / "specs", here.parent / "specs"):
        for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
            if f"specs/{path.name}" not in out:
                try:
                    out[f"specs/{path.name}"] = compile_spec(path).graph
                except GraphresError:
                    continue
    return out


def _diff(args: argparse.Namespace) -> int:
    from .backends.diff import diff_dict, format_diff
    from .pipeline import compile_spec
    common = list(args.overrides) + (parse_input_size(args.input) if args.input else [])
    compiled, errors = [], []
    for spec, own in ((args.spec_a, args.overrides_a), (args.spec_b, args.overrides_b)):
        try:
            compiled.append(compile_spec(spec, common + list(own)))
        except SpecError as e:  # report both sides' errors, then exit 2: 1 means "different" here
            errors.append(e)
    if errors:
        if args.json:
            print(json.dumps({"ok": False, "diagnostics": [d.to_dict() for e in errors for d in e.diagnostics]},
                             indent=2))
        else:
            print("\n\n".join(e.render(color=use_color(sys.stderr)) for e in errors), file=sys.stderr)
        return EXIT_USAGE
    a, b = compiled
    data = diff_dict(a.graph, b.graph, args.spec_a, args.spec_b,
                     (common + list(args.overrides_a), common + list(args.overrides_b)))
    if args.json:
        data["diagnostics"] = [d.to_dict() for c in compiled for d in c.warnings]
        print(json.dumps(data, indent=2))
    else:
        for c in compiled:
            _print_warnings(c)
        print(format_diff(data, args.level, color=use_color(sys.stdout)))
    return EXIT_OK if data["identical"] else EXIT_SPEC


def _import(args: argparse.Namespace) -> int:
    import yaml

    from .pipeline import compile_spec
    from .spec.load import parse_document
    from .spec.pyconfig import emit_spec, read_config
    imported = read_config(args.config)
    if imported.warnings:
        print(format_diagnostics(imported.warnings, imported.sources, color=use_color(sys.stderr)), file=sys.stderr)
    # validate before writing: errors point into the config files, where the values were written
    spec, diags = parse_document(imported.doc, imported.sources, args.config)
    if diags.has_errors or spec is None:
        raise SpecError(diags.items, imported.sources)
    spec.warnings = [d for d in diags if not d.is_error]
    g = compile_spec(spec).graph
    summary = [f"{g.graph['name']}: {g.graph['params']:,} parameters, {g.graph['macs']:,} MACs at "
               f"{'x'.join(map(str, g.nodes['input']['meta']['shape']))}"]
    text = emit_spec(imported, summary)
    written = yaml.safe_load(text)  # the text must say exactly what was imported
    again = compile_spec(written).graph
    if written != imported.doc.data or (again.graph["params"], again.graph["macs"]) != \
            (g.graph["params"], g.graph["macs"]):
        raise GraphresError("internal error: the written spec does not compile to the imported backbone")
    if args.output:
        write_atomic(args.output, text.encode())  # an OutputError names the file and the reason
        print(f"wrote {args.output} ({summary[0]})")
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _schema(args: argparse.Namespace) -> int:
    from .spec.schema import schema_json
    text = schema_json(partial=args.partial, draft=args.draft)
    if args.output:
        write_atomic(args.output, text.encode())
    else:
        sys.stdout.write(text)
    return EXIT_OK


LIST_SIZE = (224, 224)  # graphres list compares the shipped specs at one input size


def list_specs() -> list[dict]:
    """The shipped specs, each compiled at 224x224: name, file, parameters, MACs, output stride."""
    from .pipeline import compile_spec
    from .spec.names import SHIPPED_DISPLAY, shipped_names
    rows = []
    for name in shipped_names():
        g = compile_spec(name, input_size=LIST_SIZE).graph
        rows.append({"name": name, "file": f"{SHIPPED_DISPLAY}/{name}.yaml", "params": g.graph["params"],
                     "macs": g.graph["macs"], "input": list(LIST_SIZE), "output_stride": g.graph["stages"][-1]["stride"],
                     "out_channels": [o["channels"] for o in g.graph["outputs"]], "head": bool(g.graph.get("head"))})
    return rows


def _list(args: argparse.Namespace) -> int:
    rows = list_specs()
    if args.json:
        print(json.dumps({"specs": rows}, indent=2))
        return EXIT_OK
    width = max(len(r["name"]) for r in rows)
    print(f"{'spec':<{width}} {'parameters':>11} {'MACs at 224x224':>15} {'stride':>6}  outputs")
    for r in rows:
        outs = "logits" if r["head"] else ", ".join(map(str, r["out_channels"])) + " ch"
        print(f"{r['name']:<{width}} {r['params']:>11,} {r['macs']:>15,} {r['output_stride']:>6}  {outs}")
    print(f"\n{len(rows)} shipped specs ({rows[0]['file'].rsplit('/', 1)[0]}/): name one where a SPEC path goes, "
          f"e.g. graphres info resnet50;\na local file of that name wins. MACs: multiply-accumulates at 224x224.")
    return EXIT_OK


def _lsp(args: argparse.Namespace) -> int:
    try:
        from .lsp.server import serve
    except ImportError as e:  # pygls is an optional extra
        raise GraphresError(f"graphres lsp needs pygls ({e}): pip install 'graphres[lsp]'") from None
    serve()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
