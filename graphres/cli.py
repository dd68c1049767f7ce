"""Command line: ``graphres validate | info | expand | render | compile``.

Exit codes: 0 success, 1 errors in the spec (or a checkpoint / Graphviz problem), 2 usage errors.
Only ``compile`` imports torch; ``validate``, ``info``, ``expand`` and ``render`` start without it.
"""
from __future__ import annotations

import argparse
import json
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
    c = command("compile", "compile to a torch.export program (.pt2) that runs with torch alone")
    c.add_argument("-o", "--output", required=True, help="output file (.pt2)")
    c.add_argument("--checkpoint", help="load these weights first (torchvision or OpenMMLab layout)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if not _is_file(args.spec):
            raise _Usage(f"spec file '{args.spec}' not found")
        commands = {"validate": _validate, "info": _info, "expand": _expand, "render": _render, "compile": _compile}
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


def _compile_spec(args: argparse.Namespace):
    from .pipeline import compile_spec
    overrides = list(args.overrides)
    if getattr(args, "input", None):
        overrides += parse_input_size(args.input)
    return compile_spec(args.spec, overrides)


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
    print(format_info(compiled.graph, args.level, color=use_color(sys.stdout), source=args.spec))
    return EXIT_OK


def _expand(args: argparse.Namespace) -> int:
    import yaml

    from .spec.emit import to_explicit
    compiled = _compile_spec(args)
    _print_warnings(compiled)
    text = "# expanded by graphres from " + args.spec + "\n" + yaml.safe_dump(
        to_explicit(compiled.spec), sort_keys=False, default_flow_style=None, width=100)
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


def _compile(args: argparse.Namespace) -> int:
    from .passes.limits import check_memory
    compiled = _compile_spec(args)
    _print_warnings(compiled)
    check_output(args.output)  # before the minutes a large compile can take
    check_memory(compiled, "compile")  # before torch allocates anything
    import warnings

    from . import CheckpointWarning, build
    from .backends.export import export_module, save_program, seeded
    with warnings.catch_warnings(), seeded():  # seeded: the same spec compiles to the same bytes
        warnings.simplefilter("ignore", CheckpointWarning)  # printed below, without a source line
        model = build(compiled, checkpoint=args.checkpoint)
    report = getattr(model, "load_report", None)
    if report is not None:
        print(f"checkpoint: {report}")
        for message in report.warnings:
            print(f"graphres: warning: {message}", file=sys.stderr)
    spec = compiled.spec
    program = export_module(model, spec.input_channels, spec.input_size)
    out = save_program(program, args.output)
    print(f"wrote {out} (torch.export program; load with torch.export.load)")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
