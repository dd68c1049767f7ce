"""Fuzz harness: hostile specs through the CLI's validate path, in-process, counted by outcome.

    python tools/fuzz.py [--cases N] [--seed S] [--mode structure|bytes|mixed] [--time-limit SEC]
                         [--memory-limit MIB] [--crash-dir DIR] [--quiet]

Each case is a spec text made from a shipped spec (specs/*.yaml) or a randomly generated block
spec, then mutated:

- structure-aware: values replaced with hostile ones (huge, negative, NaN, wrong types, deep
  nesting, YAML tags on the wrong kind of value, aliases, expressions), keys deleted, added,
  duplicated, lists grown; sometimes a ``--set`` override or a ``_base_`` pointing somewhere odd;
- byte-level: bits flipped, bytes inserted, deleted, duplicated, or a slice of another spec
  spliced in.

The case runs ``graphres validate`` in this process (``graphres.cli.main``) with its output
captured (and, when it validates, ``expand`` and ``info --level layer --json`` too), under a
CPU-time limit (SIGPROF; a wall-clock limit six times as long backs it up) and an address-space
limit (RLIMIT_AS above what the process already uses). Outcomes: ``ok`` (exit 0), ``error`` (exit 1: a located error),
``usage`` (exit 2), ``crash`` (any exception out of main, or a diagnostic that breaks the JSON
printer), ``hang`` (over the time limit), ``memory`` (MemoryError), ``big-output`` (over 1 MB
printed). Each crash, hang or memory case whose signature (exception type and the innermost
graphres frame) is new is reduced line by line, then character by character, to a minimal
reproducer saved as ``DIR/<outcome>-<hash>.yaml`` (plus ``.args`` with the ``--set`` values).

The exit status is 1 when any case crashed, hung, ran out of memory or printed too much.
``make fuzz`` runs 100,000 cases with a random seed; ``make test`` runs a fixed-seed slice
(tests/test_fuzz.py).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import io
import json
import os
import random
import resource
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

OUTPUT_LIMIT = 1_000_000  # bytes of printed output per case
WALL_FACTOR = 6  # wall-clock backstop, as a multiple of the per-case CPU-time limit
OUTCOMES = ("ok", "error", "usage", "crash", "hang", "memory", "big-output")
BAD = ("crash", "hang", "memory", "big-output")

# Raw YAML put where a value was (the placeholder trick keeps the rest of the document valid).
RAW_VALUES = [
    "!!int abc", "!!bool 1", "!!float x", "!!map BN", "!!seq x", "!!str 5", "!!null 3", "!!binary AAAA",
    "!!timestamp 2001-12-14", "!!set {a, b}", "!!omap [a: 1]", "!!python/object:os.system x", "!custom 1",
    "!!int 0x7f", "!!int 0o17", "!!int 1_000", "!!float .inf", "!!map {}", "!!seq []", "!!bool yes",
    ".nan", ".inf", "-.inf", "1.0e+400", "-1.0e+400", "1e-400", "0x10", "0o7", "1_0", "~", "''", '"\\x00"',
    "9" * 4301, "9" * 5000, "-" + "9" * 4400, "1" + "0" * 30, "2e9", "-2147483649",
    "[" * 500 + "]" * 500, "{a: " * 200 + "1" + "}" * 200, "[" * 60 + "1" + "]" * 60,
    "&a [1, 2]", "*undefined", "&x [*x]", "{<<: {type: BN}}", "{<<: [1, 2]}", "{<<: 5}",
    "'planes * 2'", "'in_channels ** 99'", "'1 // 0'", "'max()'", "'(' * 10'", "'x' ", "\"\\u00e9\"",
    "[]", "{}", "[[]]", "[{}]", "{type: []}", "{type: {}}", "{type: ConvWS, eps: .inf}", "{type: ConvWS, eps: .nan}",
    "{eps: .nan}", "{eps: -1}", "{momentum: -5}", "{momentum: .nan}", "{type: IN}", "{type: GN, num_groups: 0}",
    "{type: GN, num_groups: 3}", "{type: FrozenBN}", "{type: SyncBN}", "100000000", "100001", "65536",
    "/etc/passwd", "/etc/shadow", "/", ".", "..", "specs", "'?'", "'a: b'", "'- x'",
]
PLAIN_VALUES = [None, -1, 0, 1, 2, 3, 4, 7, 8, 16, 64, 65536, 10 ** 8, 10 ** 12, -(10 ** 9), 1.5, -0.5, 0.0, 1e-30,
                float("nan"), float("inf"), True, False, "x", "", "caffe", "pytorch", "BN", "GN", "IN", "SyncBN",
                "ConvWS", "Conv2d", "basic", "bottleneck", "conv7x7", "deep", "relu", "sigmoid", "planes * 2",
                "in_channels", "out_channels", "planes // 0", "stride != 1", "input", "conv1", "bn1",
                [], {}, [1, 2], [0, 1, 2, 3], [-1], [224, 224], [1, 1], [0, 0], [100001, 100001],
                {"a": 1}, {"type": "BN"}, {"type": "ConvWS"}, {"_delete_": True}, list(range(50))]
KEYS = ["x", "type", "groups", "width", "style", "norm", "conv", "act", "from", "when", "op", "seq", "dilation",
        "blocks", "planes", "stride", "padding", "kernel", "ceil_mode", "eps", "momentum", "num_groups", "affine",
        "_base_", "_delete_", "output_stride", "out_indices", "frozen_stages", "norm_eval", "with_cp", "head",
        "init", "block_args", "let", "params", "layers", "out_channels", "name", "zero_init", "bias", "out",
        "channels", "size", "input", "stem", "stages", "depth", "base_channels", "strides", "dilations",
        "contract_dilation", "deep_stem", "avg_down", "stage_with_dcn", "num_stages", "plugins"]

# Pieces for generated block specs.
LAYERS = [
    "{{name: {n}, op: conv, out: {c}, kernel: {k}, stride: {s}, padding: {p}, dilation: {d}, groups: {g}}}",
    "{{name: {n}, op: conv, out: {c}, kernel: {k}}}",
    "{{name: {n}, op: norm}}",
    "{{name: {n}, op: norm, zero_init: true}}",
    "{{name: {n}, op: act, type: {a}}}",
    "{{name: {n}, op: maxpool, kernel: {k}, stride: {s}, padding: {p}}}",
    "{{name: {n}, op: avgpool, kernel: {k}, stride: {s}, padding: {p}, ceil_mode: {b}}}",
    "{{name: {n}, op: global_avgpool}}",
    "{{name: {n}, op: add, from: [{r1}, {r2}]}}",
    "{{name: {n}, op: mul, from: [{r1}, {r2}]}}",
    "{{name: {n}, op: concat, from: [{r1}, {r2}]}}",
    "{{name: {n}, op: linear, out: {c}}}",
]


def generated_block_spec(rng: random.Random) -> str:
    """A random spec with a block type of its own (valid or not)."""
    names: list[str] = ["input"]
    layers = []
    for i in range(rng.randint(1, 9)):
        name = rng.choice([f"l{i}", f"conv{i}", f"bn{i}", f"s.l{i}", "relu", "input", "x.y.z", "1bad", ""])
        tpl = rng.choice(LAYERS)
        layers.append("      - " + tpl.format(
            n=name or "''", c=rng.choice(["planes", "out_channels", "in_channels", "planes * 4", "8", "0", "-1",
                                          "squeezed", "planes // 3"]),
            k=rng.choice([1, 3, 5, 7, 0, 2, 11]), s=rng.choice([1, 2, "stride", 0]),
            p=rng.choice([0, 1, 2, 3, 5, "dilation", -1]), d=rng.choice([1, 2, "dilation", 0]),
            g=rng.choice([1, 2, 3, 32, "planes"]), a=rng.choice(["relu", "sigmoid", "gelu", "nope"]),
            b=rng.choice(["true", "false"]), r1=rng.choice(names), r2=rng.choice(names + ["nowhere"])))
        names.append(name or "input")
    if rng.random() < 0.5:
        layers.append("      - {seq: down, from: input, when: stride != 1 or in_channels != out_channels, layers: "
                      "[{op: conv, out: out_channels, kernel: 1, stride: stride}, {op: norm}]}")
    if rng.random() < 0.3:
        layers.append("      - {use: mine, planes: planes}")
    stages = "\n".join(
        f"  - {{block: mine, blocks: {rng.choice([1, 2, 3])}, planes: {rng.choice([8, 16, 64, 3])}, "
        f"stride: {rng.choice([1, 2])}}}" for _ in range(rng.randint(1, 4)))
    norm = rng.choice(["BN", "GN, num_groups: 4", "IN", "FrozenBN", "SyncBN"])
    return f"""graphres: 1
name: fuzz
input: {{channels: {rng.choice([3, 1, 4])}, size: [{rng.choice([32, 64, 7, 1])}, {rng.choice([32, 64, 5, 1])}]}}
norm: {{type: {norm}}}
conv: {{type: {rng.choice(['Conv2d', 'ConvWS'])}}}
stem: {{type: conv7x7, channels: {rng.choice([8, 16, 64])}}}
blocks:
  mine:
    params:
      planes: {{type: int, min: 1}}
      stride: {{type: int, default: 1, min: 1}}
      dilation: {{type: int, default: 1, min: 1}}
    let:
      squeezed: max(planes // 4, 1)
    out_channels: {rng.choice(['planes', 'planes * 4', 'in_channels'])}
    layers:
{chr(10).join(layers)}
stages:
{stages}
"""


def _paths(node, path=()):
    if path:
        yield path
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, path + (i,))


def structure_mutate(rng: random.Random, text: str) -> tuple[str, list[str]]:
    """Mutate the document's values and keys; return the new text and ``--set`` overrides."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return text, []
    if not isinstance(data, dict):
        return text, []
    raws: dict[str, str] = {}
    overrides: list[str] = []
    gentle = rng.random() < 0.35  # near-valid edits reach lowering, the passes and the backends
    for _ in range(rng.randint(1, 4)):
        paths = list(_paths(data))
        if not paths:
            break
        path = rng.choice(paths)
        parent = data
        for key in path[:-1]:
            parent = parent[key]
        roll = rng.random()
        if gentle:
            parent[path[-1]] = plausible(rng, parent[path[-1]])
            continue
        if roll < 0.3:
            parent[path[-1]] = copy.deepcopy(rng.choice(PLAIN_VALUES))
        elif roll < 0.55:
            marker = f"@@RAW{len(raws)}@@"
            raws[marker] = rng.choice(RAW_VALUES)
            parent[path[-1]] = marker
        elif roll < 0.65 and isinstance(parent, dict):
            del parent[path[-1]]
        elif roll < 0.75 and isinstance(parent, dict):
            parent[rng.choice(KEYS)] = copy.deepcopy(rng.choice(PLAIN_VALUES))
        elif roll < 0.8 and isinstance(parent, list):
            parent.extend(copy.deepcopy(parent) * rng.randint(1, 3))
        elif roll < 0.85:
            data["_base_"] = rng.choice(["resnet50.yaml", "resnet18.yaml", "/etc/passwd", "/etc/hostname",
                                         "missing.yaml", ".", "/dev/null", "loop.yaml", "case.yaml",
                                         ["resnet18.yaml", "resnet50.yaml"], "notspec.yaml"])
        elif roll < 0.9:
            marker = f"@@RAW{len(raws)}@@"
            raws[marker] = "!!" + rng.choice(["int", "bool", "float", "map", "seq", "str"]) + " " + \
                rng.choice(["x", "1", "BN", "abc", "[1]", "true"])
            parent[path[-1]] = marker
        else:
            dotted = ".".join(str(p) for p in path)
            overrides.append(f"{dotted}={rng.choice(RAW_VALUES + ['1', '2', 'x', '[1, 2]', '{a: 1}'])}")
    try:
        out = yaml.safe_dump(data, sort_keys=False, default_flow_style=rng.choice([None, True, False]), width=10 ** 6)
    except (yaml.YAMLError, RecursionError, ValueError):
        return text, overrides
    for marker, raw in raws.items():
        out = out.replace(marker, raw)
    if rng.random() < 0.1:  # a tagged key
        out = out.replace("name:", "!!int name:", 1)
    return out, overrides


SIBLINGS = [("BN", "GN", "IN", "SyncBN", "FrozenBN"), ("Conv2d", "ConvWS"), ("caffe", "pytorch"),
            ("basic", "bottleneck"), ("conv7x7", "deep"), ("relu", "relu6", "silu", "gelu", "leaky_relu",
                                                            "hardswish", "sigmoid", "hardsigmoid")]


def plausible(rng: random.Random, value):
    """A value near ``value``: an integer nudged, a name swapped for a sibling, a flag flipped."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return rng.choice([value + 1, value - 1, value * 2, value // 2, 0, 1, 2, 3, -1, value * 1000])
    if isinstance(value, float):
        return rng.choice([value * 10, value / 10, 0.0, 1.0, -value])
    if isinstance(value, str):
        for group in SIBLINGS:
            if value in group:
                return rng.choice(group)
        return rng.choice([value, value + " + 1", value + " * 2", f"max({value}, 1)", "stride", "planes"])
    if isinstance(value, list) and value:
        return rng.choice([value[:-1], value + value[-1:], list(reversed(value))])
    return value


def byte_mutate(rng: random.Random, text: str, others: list[str]) -> str:
    data = bytearray(text.encode("utf-8"))
    for _ in range(rng.randint(1, 8)):
        if not data:
            data = bytearray(b"graphres: 1\n")
        i = rng.randrange(len(data))
        roll = rng.random()
        if roll < 0.3:
            data[i] ^= 1 << rng.randrange(8)
        elif roll < 0.5:
            data[i:i] = bytes([rng.choice(b"[]{}:,-!&*|>'\"#%@ \n\t0123456789aZ.\x00\xff")])
        elif roll < 0.65:
            del data[i:i + rng.randint(1, 16)]
        elif roll < 0.8:
            j = min(len(data), i + rng.randint(1, 64))
            data[i:i] = data[i:j] * rng.randint(1, 4)
        else:
            other = rng.choice(others).encode("utf-8")
            a = rng.randrange(len(other))
            data[i:i] = other[a:a + rng.randint(1, 200)]
    return data.decode("utf-8", errors=rng.choice(["replace", "ignore", "surrogateescape"]))


class _Timeout(BaseException):
    pass


def _on_alarm(signum, frame):
    raise _Timeout()


def _vm_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def _signature(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if "graphres" in f.filename] or frames
    where = f"{Path(own[-1].filename).name}:{own[-1].lineno}" if own else "?"
    return f"{type(exc).__name__}@{where}"


class Runner:
    def __init__(self, workdir: Path, time_limit: float, memory_limit_mib: int):
        self.workdir = workdir
        self.time_limit = time_limit
        self.memory_limit = memory_limit_mib * 2 ** 20
        from graphres import cli
        self.cli = cli

    def run(self, text: str, overrides: list[str]) -> tuple[str, str]:
        """One case: (outcome, signature of the crash or '')."""
        path = self.workdir / "case.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogateescape")
        argv = ["validate", str(path), "--json" if len(text) % 3 == 0 else "--strict"]
        for o in overrides:
            argv += ["--set", o]
        out, err = io.StringIO(), io.StringIO()
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = _vm_bytes() + self.memory_limit
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        old = signal.signal(signal.SIGALRM, _on_alarm), signal.signal(signal.SIGPROF, _on_alarm)
        cwd = os.getcwd()
        outcome, sig, printed = "ok", "", 0
        try:
            os.chdir(self.workdir)
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
            # CPU time (so that a loaded machine does not make slow cases look hung), with wall time
            # as a backstop for a case that blocks
            signal.setitimer(signal.ITIMER_PROF, self.time_limit)
            signal.setitimer(signal.ITIMER_REAL, WALL_FACTOR * self.time_limit)
            code = self._main(argv, out, err)
            outcome = {0: "ok", 1: "error", 2: "usage"}.get(code, "crash")
            if outcome == "crash":
                sig = f"exit {code}"
            if "--json" in argv and outcome in ("ok", "error"):
                json.loads(out.getvalue())
            printed = len(out.getvalue()) + len(err.getvalue())
            if outcome == "ok":  # a spec that validates must also expand and report (their size is the spec's)
                sets = argv[3:]
                for extra in (["expand", str(path)], ["info", str(path), "--level", "layer", "--json"]):
                    code = self._main(extra + sets, io.StringIO(), io.StringIO())
                    if code not in (0, 1):
                        outcome, sig = "crash", f"{extra[0]} exit {code}"
                        break
        except _Timeout:
            outcome, sig = "hang", "timeout"
        except MemoryError as e:
            outcome, sig = "memory", _signature(e)
        except BaseException as e:  # noqa: BLE001 - anything out of main is a crash
            outcome, sig = "crash", _signature(e)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.setitimer(signal.ITIMER_PROF, 0)
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
            signal.signal(signal.SIGALRM, old[0])
            signal.signal(signal.SIGPROF, old[1])
            os.chdir(cwd)
        if outcome in ("ok", "error", "usage") and printed > OUTPUT_LIMIT:
            outcome, sig = "big-output", "output"
        return outcome, sig


    def _main(self, argv: list[str], out: io.StringIO, err: io.StringIO) -> int:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                return self.cli.main(argv)
            except SystemExit as e:
                return e.code if isinstance(e.code, int) else 2


def minimise(runner: Runner, text: str, overrides: list[str], outcome: str, sig: str, budget: int = 400) -> str:
    """Delta-debug ``text`` (lines, then characters) while the case keeps the same outcome and signature."""
    tries = [0]

    def same(candidate: str) -> bool:
        if tries[0] >= budget:
            return False
        tries[0] += 1
        return runner.run(candidate, overrides) == (outcome, sig)

    for unit in ("lines", "chars"):
        parts = text.splitlines(keepends=True) if unit == "lines" else list(text)
        if unit == "chars" and len(parts) > 20000:
            break
        chunk = max(1, len(parts) // 2)
        while chunk >= 1 and tries[0] < budget:
            i, changed = 0, False
            while i < len(parts) and tries[0] < budget:
                candidate = parts[:i] + parts[i + chunk:]
                if candidate and same("".join(candidate)):
                    parts, changed = candidate, True
                else:
                    i += chunk
            if not changed:
                chunk //= 2
        text = "".join(parts)
    return text


def fuzz(cases: int, seed: int, mode: str = "mixed", time_limit: float = 10.0, memory_limit_mib: int = 2048,
         crash_dir: Path | None = None, quiet: bool = False, log=print) -> Counter:
    rng = random.Random(seed)
    shipped = [p.read_text() for p in sorted((ROOT / "specs").glob("*.yaml"))]
    counts: Counter = Counter()
    seen: set[str] = set()
    crash_dir = Path(crash_dir) if crash_dir else None
    with tempfile.TemporaryDirectory(prefix="graphres-fuzz-") as tmp:
        workdir = Path(tmp)
        for p in sorted((ROOT / "specs").glob("*.yaml")):
            shutil.copy(p, workdir / p.name)
        (workdir / "notspec.yaml").write_text("secret: hunter2\nrows: [1, 2]\n")
        with contextlib.suppress(OSError):
            (workdir / "loop.yaml").symlink_to("loop.yaml")
        runner = Runner(workdir, time_limit, memory_limit_mib)
        start = time.monotonic()
        for n in range(cases):
            base = generated_block_spec(rng) if rng.random() < 0.3 else rng.choice(shipped)
            kind = mode if mode != "mixed" else ("bytes" if rng.random() < 0.2 else "structure")
            if kind == "structure":
                text, overrides = structure_mutate(rng, base)
            else:
                text, overrides = byte_mutate(rng, base, shipped), []
            outcome, sig = runner.run(text, overrides)
            counts[outcome] += 1
            counts[f"{kind}:{outcome}"] += 1
            if outcome in BAD and sig not in seen:
                seen.add(sig)
                small = minimise(runner, text, overrides, outcome, sig, budget=400 if outcome == "crash" else 12)
                name = f"{outcome}-{hashlib.sha1(sig.encode()).hexdigest()[:10]}"
                if not quiet:
                    log(f"case {n}: {outcome} {sig} ({len(text)} -> {len(small)} chars)")
                if crash_dir is not None and not (crash_dir / f"{name}.yaml").exists():
                    crash_dir.mkdir(parents=True, exist_ok=True)
                    (crash_dir / f"{name}.yaml").write_text(small, encoding="utf-8", errors="surrogateescape")
                    (crash_dir / f"{name}.args").write_text(
                        f"# {sig}\n" + "".join(f"--set {o}\n" for o in overrides))
            if not quiet and (n + 1) % 1000 == 0:
                log(f"{n + 1} cases, {time.monotonic() - start:.0f} s: {_summary(counts)}")
        counts["seconds"] = round(time.monotonic() - start)
    return counts


def _summary(counts: Counter) -> str:
    return ", ".join(f"{k} {counts[k]}" for k in OUTCOMES if counts[k])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=1000)
    p.add_argument("--seed", type=int, default=None, help="default: a random seed (printed)")
    p.add_argument("--mode", choices=("structure", "bytes", "mixed"), default="mixed")
    p.add_argument("--time-limit", type=float, default=10.0, help="CPU seconds per case (default 10)")
    p.add_argument("--memory-limit", type=int, default=2048, help="MiB of address space per case (default 2048)")
    p.add_argument("--crash-dir", default="build/fuzz-crashes", help="where minimal reproducers go")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2 ** 32)
    print(f"graphres fuzz: {args.cases} cases, seed {seed}, mode {args.mode}", flush=True)
    counts = fuzz(args.cases, seed, args.mode, args.time_limit, args.memory_limit, Path(args.crash_dir),
                  args.quiet, log=lambda s: print(s, flush=True))
    print(f"done in {counts['seconds']} s: {_summary(counts)}")
    print("by mutation: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if ":" in k))
    return 1 if any(counts[k] for k in BAD) else 0


if __name__ == "__main__":
    sys.exit(main())
