"""Diagnostics: spans, located errors and the compiler-style printer (used by every stage).

Every user mistake becomes a :class:`Diagnostic` with a code from :data:`CODES`, the span of the
value that caused it, and a hint where one exists. Stages collect diagnostics in a
:class:`DiagnosticBag` so that one run reports all of them; :class:`SpecError` carries them out.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from typing import Iterable, Sequence

# The catalogue: every code graphres emits, with a short title. docs/diagnostics.md documents each
# one and a test keeps the two in step.
CODES: dict[str, str] = {
    "E001": "YAML syntax error",
    "E002": "duplicate key",
    "E003": "unsupported YAML tag",
    "E004": "cannot read file",
    "E005": "bad inheritance (_base_)",
    "E006": "bad --set override",
    "E010": "unknown key",
    "E011": "wrong type",
    "E012": "missing required key",
    "E013": "value not allowed",
    "E014": "value out of range",
    "E015": "length mismatch",
    "E016": "not supported yet",
    "E017": "conflicting options",
    "E020": "unknown block type",
    "E021": "unknown op",
    "E022": "bad expression",
    "E023": "bad layer reference",
    "E030": "channel mismatch",
    "E031": "norm does not fit the channels",
    "E032": "spatial size reaches zero",
    "E033": "bad out_indices",
    "E034": "bad frozen_stages",
    "E040": "dilated kernel larger than its padded input",
    "E050": "block uses itself",
    "E051": "output stride differs from the declared one",
    "E052": "output_stride cannot trade a stage's stride",
    "E053": "linear input is not 1x1",
    "E080": "Python config cannot be read",
    "E081": "config value is not a literal",
    "E082": "bad config inheritance (_base_)",
    "E083": "config name or reference does not resolve",
    "E084": "no model.backbone in the config",
    "E085": "new-style config (read_base) not supported",
    "E090": "unknown model-zoo name",
    "E130": "unknown initialiser type",
    "E131": "init override not supported",
    "E132": "unknown init layer class",
    "W001": "dilated stage also strides",
    "W002": "feature output is 1 pixel wide",
    "W003": "dilated kernel larger than its input",
    "W004": "dilation schedule decreases",
    "W005": "frozen stage after a trainable one",
    "W010": "later stage keeps resolution without dilation",
    "W030": "config statement not run",
    "W031": "config value left out of the spec",
    "W130": "deprecated pretrained",
    "W131": "initialiser names no layer",
    "E060": "YAML tag does not fit the value",
    "E061": "integer too large",
    "E062": "spec too large or too deeply nested",
    "E063": "pool padding over half the kernel",
    "E064": "instance norm over a single value",
    "E065": "weight standardisation over a single weight",
    "E066": "model too large",
    "E067": "model does not fit in memory",
    "W020": "model needs much memory",
    "E100": "unknown spec name",
    "E110": "unknown dcn type",
    "E111": "dcn on a basic block",
    "E112": "dcn with conv_cfg",
    "E113": "DCN v1 with a bias",
    "E114": "stage_with_dcn length differs from num_stages",
    "E115": "deform_groups does not divide the channels",
    "W110": "fallback_on_stride differs from mmdetection",
    "W111": "deformable conv input smaller than its kernel",
    "E120": "tensor shapes do not fit a tensor op",
    "E121": "unknown plugin position",
    "E122": "plugin stages mask of the wrong length",
    "E123": "unknown plugin type",
    "E124": "two plugins with one name",
    "E125": "plugins on a block without plugin positions",
    "E126": "plugin argument out of range",
    "W120": "NonLocal2d sub_sample breaks mmdetection's init_weights",
    "W121": "NonLocal2d concatenation cannot train in mmcv",
    "W122": "plugin postfix outside cfg is ignored",
    "E127": "GeneralizedAttention attention_type is not four 0/1 bits",
    "E128": "GeneralizedAttention argument out of range",
    "E129": "GeneralizedAttention spatial_range on a width mmcv has no mask for",
    "W123": "GeneralizedAttention query-position term without geom_bias (mmcv: square maps only)",
    "W124": "GeneralizedAttention spatial_range breaks mmdetection's init_weights",
}

# How much of a run the text printer shows: the first MAX_PRINTED diagnostics (then "... and N
# more"), and at most LINE_WIDTH characters of a source line, clipped around the caret.
MAX_PRINTED = 50
MAX_JSON = 1000
LINE_WIDTH = 120


@dataclass(frozen=True)
class Span:
    """Where a value came from: 1-based line and column, plus its length on that line."""

    file: str
    line: int = 0
    col: int = 0
    length: int = 1
    origin: str = ""  # e.g. "--set", "expanded from shorthand key 'depth'"

    def __str__(self) -> str:
        if self.line <= 0:
            return self.file
        return f"{self.file}:{self.line}:{self.col}"


UNKNOWN_SPAN = Span("<unknown>")


@dataclass
class Diagnostic:
    code: str
    message: str
    span: Span = UNKNOWN_SPAN
    hint: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def severity(self) -> str:
        return "warning" if self.code.startswith("W") else "error"

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def headline(self) -> str:
        return f"{self.span}: {self.severity}[{self.code}]: {self.message}"

    def to_dict(self) -> dict:
        return {
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "file": self.span.file,
            "line": self.span.line,
            "col": self.span.col,
            "hint": self.hint,
        }


class GraphresError(Exception):
    """Base class of every error graphres raises on purpose."""


class SpecError(GraphresError, ValueError):
    """The spec has errors; ``diagnostics`` lists all of them (warnings included)."""

    def __init__(self, diagnostics: Sequence[Diagnostic], sources: "SourceCache | None" = None):
        self.diagnostics = list(diagnostics)
        self.sources = sources
        errors = [d for d in self.diagnostics if d.is_error]
        first = errors[0] if errors else (self.diagnostics[0] if self.diagnostics else None)
        text = first.headline() if first else "invalid spec"
        more = len(errors) - 1
        if more > 0:
            text += f" (and {more} more error{'s' if more > 1 else ''})"
        super().__init__(text)

    def render(self, color: bool = False) -> str:
        return format_diagnostics(self.diagnostics, self.sources, color=color)


class CheckpointError(GraphresError, ValueError):
    """A checkpoint does not fit the model built from the spec."""


class CheckpointWarning(UserWarning):
    """A checkpoint loads, but something about it suggests the numerics will be wrong."""


class DotNotFoundError(GraphresError, RuntimeError):
    """Graphviz's ``dot`` program is not installed."""


class DiagnosticBag:
    """Collects diagnostics across a stage so that all of them are reported at once."""

    def __init__(self) -> None:
        self.items: list[Diagnostic] = []
        self._seen: dict[tuple, Diagnostic] = {}

    def add(self, code: str, message: str, span: Span = UNKNOWN_SPAN, hint: str | None = None) -> Diagnostic:
        assert code in CODES, code
        key = (code, message, span)
        seen = self._seen.get(key)  # one mistake met again (a block_args value in every stage): say it once
        if seen is not None:
            return seen
        d = Diagnostic(code, message, span, hint)
        self._seen[key] = d
        self.items.append(d)
        return d

    def extend(self, items: Iterable[Diagnostic]) -> None:
        self.items.extend(items)

    @property
    def has_errors(self) -> bool:
        return any(d.is_error for d in self.items)

    def raise_if_errors(self, sources: "SourceCache | None" = None) -> None:
        if self.has_errors:
            raise SpecError(self.items, sources)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """A 'did you mean' hint for an unknown name, or None when nothing is close."""
    choices = [str(c) for c in choices]
    match = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    if not match:
        lowered = {c.lower(): c for c in choices}
        if str(word).lower() in lowered:
            match = [lowered[str(word).lower()]]
    return f"did you mean '{match[0]}'?" if match else None


def one_of(choices: Iterable[str]) -> str:
    return ", ".join(repr(c) if isinstance(c, str) else str(c) for c in choices)


class SourceCache:
    """The text of every file a spec was read from, for printing the offending line."""

    def __init__(self) -> None:
        self._texts: dict[str, str] = {}
        self._lines: dict[str, list[str]] = {}

    def add(self, name: str, text: str) -> None:
        self._texts[name] = text
        self._lines.pop(name, None)

    def line(self, name: str, lineno: int) -> str | None:
        text = self._texts.get(name)
        if text is None or lineno <= 0:
            return None
        lines = self._lines.get(name)
        if lines is None:  # split once: a run can print thousands of diagnostics from one file
            lines = self._lines[name] = text.splitlines()
        return lines[lineno - 1] if lineno <= len(lines) else None


def _paint(text: str, code: str, color: bool) -> str:
    return f"\033[{code}m{text}\033[0m" if color else text


def format_diagnostic(d: Diagnostic, sources: SourceCache | None = None, color: bool = False) -> str:
    """``file:line:col: error[E012]: message``, the source line, a caret under the value, the hint."""
    sev = _paint(f"{d.severity}[{d.code}]", "1;31" if d.is_error else "1;33", color)
    out = [f"{_paint(str(d.span), '1', color)}: {sev}: {d.message}"]
    src = sources.line(d.span.file, d.span.line) if sources else None
    if src is not None:
        gutter = str(d.span.line)
        pad = " " * len(gutter)
        src, col, length = clip_line(src.expandtabs(1), d.span.col, d.span.length)
        caret = " " * (col - 1) + "^" * length
        out.append(f"{pad} |")
        out.append(f"{gutter} | {src}")
        out.append(f"{pad} | {_paint(caret, '1;31' if d.is_error else '1;33', color)}")
    if d.span.origin:
        out.append(f"  = note: {d.span.origin}")
    for note in d.notes:
        out.append(f"  = note: {note}")
    if d.hint:
        out.append(f"  = hint: {d.hint}")
    return "\n".join(out)


def clip_line(src: str, col: int, length: int, width: int = LINE_WIDTH) -> tuple[str, int, int]:
    """The part of a long source line around the caret, marked with '...' where it was cut;
    returns the text and the caret's 1-based column and length within it."""
    col = max(1, min(col, len(src) + 1))
    length = max(1, min(length, max(1, len(src) - col + 1)))
    if len(src) <= width:
        return src, col, length
    length = min(length, width // 2)
    start = max(0, min(col - 1 - width // 3, len(src) - width))
    end = start + width
    text = src[start:end]
    col -= start
    if start > 0:
        text, col = "..." + text, col + 3
    if end < len(src):
        text += "..."
    return text, col, length


def format_diagnostics(diags: Sequence[Diagnostic], sources: SourceCache | None = None, color: bool = False,
                       limit: int | None = MAX_PRINTED) -> str:
    """All diagnostics, or the first ``limit`` of them and a line counting the rest, then the totals."""
    shown = diags if limit is None or len(diags) <= limit else diags[:limit]
    parts = [format_diagnostic(d, sources, color) for d in shown]
    if len(shown) < len(diags):
        rest = diags[len(shown):]
        e, w = sum(d.is_error for d in rest), sum(not d.is_error for d in rest)
        what = " and ".join(x for x in (f"{e} more error{'s' if e != 1 else ''}" if e else "",
                                        f"{w} more warning{'s' if w != 1 else ''}" if w else "") if x)
        parts.append(f"... and {what} (not shown; --json lists up to {MAX_JSON:,})")
    n_err = sum(d.is_error for d in diags)
    n_warn = len(diags) - n_err
    summary = []
    if n_err:
        summary.append(f"{n_err} error{'s' if n_err != 1 else ''}")
    if n_warn:
        summary.append(f"{n_warn} warning{'s' if n_warn != 1 else ''}")
    if summary:
        parts.append(", ".join(summary) + " found")
    return "\n\n".join(parts[:-1]) + ("\n\n" if len(parts) > 1 else "") + parts[-1] if parts else ""


def diagnostics_json(diags: Sequence[Diagnostic], limit: int = MAX_JSON) -> dict:
    """``{"diagnostics": [...]}`` for ``--json``, at most ``limit`` of them; ``"omitted"`` counts the rest."""
    out: dict = {"diagnostics": [d.to_dict() for d in diags[:limit]]}
    if len(diags) > limit:
        out["omitted"] = len(diags) - limit
    return out


def use_color(stream) -> bool:
    return hasattr(stream, "isatty") and stream.isatty() and not os.environ.get("NO_COLOR")  # no-color.org
