"""Language server, part 2: the LSP wiring (pygls) over :mod:`graphres.lsp.document`.

Diagnostics are published on open and save at once, and on change after a short pause
(debounced), from a compile of the buffer's text in a worker thread; only the newest version of a
buffer is published. Every handler turns an internal exception into a logged message
(window/logMessage) and an empty answer: a half-typed file never stops the server.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from lsprotocol import types as lsp
from pygls.lsp.server import LanguageServer
from pygls.uris import from_fs_path, to_fs_path
from pygls.workspace.position_codec import ServerTextPosition, ServerTextRange

from .. import __version__
from ..diagnostics import Diagnostic
from . import document as docs

DEBOUNCE_S = float(os.environ.get("GRAPHRES_LSP_DEBOUNCE", "0.3"))
SOURCE = "graphres"


@dataclass
class _State:
    version: int | None = None
    result: docs.Result | None = None  # of the newest compiled version
    good: docs.Result | None = None  # the newest version that compiled without errors (for hover)
    pending: asyncio.Task | None = None


class GraphresServer(LanguageServer):
    def __init__(self) -> None:
        super().__init__("graphres", __version__)
        self.states: dict[str, _State] = {}

    def state(self, uri: str) -> _State:
        return self.states.setdefault(uri, _State())

    def log(self, message: str, kind: lsp.MessageType = lsp.MessageType.Error) -> None:
        try:
            self.window_log_message(lsp.LogMessageParams(type=kind, message=message))
        except Exception:  # noqa: BLE001 - the transport itself failed; nothing left to tell
            logging.getLogger(__name__).exception("cannot log to the client")


server = GraphresServer()


def _guarded(fn: Callable) -> Callable:
    """Run a handler; an internal error becomes a logged message and an empty answer."""
    if asyncio.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def run_async(ls: GraphresServer, params: Any) -> Any:
            try:
                return await fn(ls, params)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001
                ls.log(f"graphres: internal error in {fn.__name__}:\n{traceback.format_exc()}")
                return None
        return run_async

    @functools.wraps(fn)
    def run(ls: GraphresServer, params: Any) -> Any:
        try:
            return fn(ls, params)
        except Exception:  # noqa: BLE001
            ls.log(f"graphres: internal error in {fn.__name__}:\n{traceback.format_exc()}")
            return None
    return run


# -- diagnostics --------------------------------------------------------------------------------------

def client_range(ls: GraphresServer, text: str, line0: int, start: int, end: int) -> lsp.Range:
    """A range on one line, in code points (as graphres counts columns), in the client's units
    (UTF-16 unless the client chose otherwise)."""
    lines = text.splitlines(keepends=True) or [""]
    rng = ServerTextRange(ServerTextPosition(line0, start), ServerTextPosition(line0, end))
    if line0 >= len(lines):
        return lsp.Range(lsp.Position(line0, start), lsp.Position(line0, end))
    return ls.workspace.position_codec.range_to_client_units(lines, rng)


def server_position(ls: GraphresServer, uri: str, position: lsp.Position) -> tuple[int, int]:
    """A position from the client's units into (line, code point)."""
    doc = ls.workspace.get_text_document(uri)
    if position.line >= len(doc.lines):  # the empty last line of a text that ends with a newline
        return position.line, position.character
    p = doc.position_from_client_units(position)
    return p.line, p.character


def _range(ls: GraphresServer, text: str, line: int, col: int, length: int) -> lsp.Range:
    """A diagnostic span (1-based line and column) as an LSP range."""
    line0, col0 = max(0, line - 1), max(0, col - 1)
    return client_range(ls, text, line0, col0, col0 + max(1, length))


def _base_range(ls: GraphresServer, text: str) -> lsp.Range:
    for i, line in enumerate(text.split("\n")):
        if line.startswith("_base_"):
            return client_range(ls, text, i, 0, len(line))
    return lsp.Range(lsp.Position(0, 0), lsp.Position(0, 1))


def to_lsp(ls: GraphresServer, d: Diagnostic, path: str, uri: str, text: str) -> lsp.Diagnostic:
    """The same code, message and range as ``graphres validate``; the hint and notes go in the
    related information. A diagnostic in another file (a ``_base_`` file, a built-in block) is
    shown at the ``_base_`` line with its own location in front of the message."""
    severity = lsp.DiagnosticSeverity.Error if d.is_error else lsp.DiagnosticSeverity.Warning
    message = d.message
    if d.span.line > 0 and docs.is_same_file(d.span.file, path):
        rng = _range(ls, text, d.span.line, d.span.col, d.span.length)
        where = lsp.Location(uri, rng)
    else:
        rng = _base_range(ls, text) if d.span.line > 0 else lsp.Range(lsp.Position(0, 0), lsp.Position(0, 1))
        message = f"{d.span}: {d.message}" if d.span.line > 0 else d.message
        where = lsp.Location(uri, rng)
    related = [lsp.DiagnosticRelatedInformation(where, f"note: {n}") for n in d.notes]
    if d.span.origin:
        related.insert(0, lsp.DiagnosticRelatedInformation(where, f"note: {d.span.origin}"))
    if d.hint:
        related.append(lsp.DiagnosticRelatedInformation(where, f"hint: {d.hint}"))
    return lsp.Diagnostic(range=rng, message=message, severity=severity, code=d.code, source=SOURCE,
                          related_information=related or None, data={"hint": d.hint})


async def _validate(ls: GraphresServer, uri: str, delay: float) -> None:
    if delay:
        await asyncio.sleep(delay)
    doc = ls.workspace.get_text_document(uri)
    version, text = doc.version, doc.source
    path = to_fs_path(uri) or uri
    if docs.is_builtin_block_file(path):  # a library of block types (tested), not a spec
        ls.text_document_publish_diagnostics(lsp.PublishDiagnosticsParams(uri=uri, diagnostics=[], version=version))
        return
    try:
        result = await asyncio.to_thread(docs.compile_buffer, path, text)
    except Exception:  # noqa: BLE001 - a bug of graphres, not of the spec
        ls.log(f"graphres: internal error while checking {path}:\n{traceback.format_exc()}")
        return
    state = ls.state(uri)
    current = ls.workspace.get_text_document(uri)
    if current.version != version:
        return  # a newer version is on its way
    state.version, state.result = version, result
    if result.compiled is not None:
        state.good = result
    diagnostics = [to_lsp(ls, d, path, uri, text) for d in result.diagnostics]
    ls.text_document_publish_diagnostics(lsp.PublishDiagnosticsParams(uri=uri, diagnostics=diagnostics,
                                                                      version=version))


def _schedule(ls: GraphresServer, uri: str, delay: float) -> None:
    state = ls.state(uri)
    if state.pending is not None and not state.pending.done():
        state.pending.cancel()

    async def run() -> None:
        try:
            await _validate(ls, uri, delay)
        except asyncio.CancelledError:
            pass
        except Exception:  # noqa: BLE001
            ls.log(f"graphres: internal error while checking {uri}:\n{traceback.format_exc()}")

    state.pending = asyncio.get_running_loop().create_task(run())


@server.feature(lsp.TEXT_DOCUMENT_DID_OPEN)
@_guarded
async def did_open(ls: GraphresServer, params: lsp.DidOpenTextDocumentParams) -> None:
    _schedule(ls, params.text_document.uri, 0)


@server.feature(lsp.TEXT_DOCUMENT_DID_CHANGE)
@_guarded
async def did_change(ls: GraphresServer, params: lsp.DidChangeTextDocumentParams) -> None:
    _schedule(ls, params.text_document.uri, DEBOUNCE_S)


@server.feature(lsp.TEXT_DOCUMENT_DID_SAVE)
@_guarded
async def did_save(ls: GraphresServer, params: lsp.DidSaveTextDocumentParams) -> None:
    _schedule(ls, params.text_document.uri, 0)


@server.feature(lsp.TEXT_DOCUMENT_DID_CLOSE)
@_guarded
async def did_close(ls: GraphresServer, params: lsp.DidCloseTextDocumentParams) -> None:
    state = ls.states.pop(params.text_document.uri, None)
    if state and state.pending:
        state.pending.cancel()
    ls.text_document_publish_diagnostics(lsp.PublishDiagnosticsParams(uri=params.text_document.uri, diagnostics=[]))


# -- hover, completion, definition --------------------------------------------------------------------

def _text(ls: GraphresServer, uri: str) -> tuple[str, str]:
    return ls.workspace.get_text_document(uri).source, to_fs_path(uri) or uri


@server.feature(lsp.TEXT_DOCUMENT_HOVER)
@_guarded
def hover(ls: GraphresServer, params: lsp.HoverParams) -> lsp.Hover | None:
    text, _ = _text(ls, params.text_document.uri)
    state = ls.states.get(params.text_document.uri)
    compiled = state.good.compiled if state and state.good else None
    md = docs.hover(text, *server_position(ls, params.text_document.uri, params.position), compiled)
    if md is None:
        return None
    return lsp.Hover(contents=lsp.MarkupContent(kind=lsp.MarkupKind.Markdown, value=md))


@server.feature(lsp.TEXT_DOCUMENT_COMPLETION, lsp.CompletionOptions(trigger_characters=[" ", ":"]))
@_guarded
def completion(ls: GraphresServer, params: lsp.CompletionParams) -> lsp.CompletionList:
    text, path = _text(ls, params.text_document.uri)
    line, char = server_position(ls, params.text_document.uri, params.position)
    candidates = docs.complete(text, line, char, docs.base_block_names(path, text))
    typed_after_colon = text.split("\n")[line][:char].rstrip().endswith(":") if line < len(text.split("\n")) else False
    items = []
    for c in candidates:
        if c.is_key:
            items.append(lsp.CompletionItem(label=c.label, kind=lsp.CompletionItemKind.Property,
                                            detail=c.detail.split("\n")[0] or None,
                                            documentation=c.detail or None, insert_text=f"{c.label}: "))
        else:
            items.append(lsp.CompletionItem(label=c.label, kind=lsp.CompletionItemKind.EnumMember,
                                            detail=c.detail.split("\n")[0] or None,
                                            insert_text=(" " if typed_after_colon and
                                                         not text.split("\n")[line][:char].endswith(" ") else "")
                                            + c.label))
    return lsp.CompletionList(is_incomplete=False, items=items)


@server.feature(lsp.TEXT_DOCUMENT_DEFINITION)
@_guarded
def definition(ls: GraphresServer, params: lsp.DefinitionParams) -> lsp.Location | None:
    text, path = _text(ls, params.text_document.uri)
    target = docs.definition(path, text, *server_position(ls, params.text_document.uri, params.position))
    if target is None:
        return None
    try:
        with open(target.path, encoding="utf-8") as f:
            target_text = f.read()
    except (OSError, UnicodeDecodeError):
        target_text = ""
    rng = client_range(ls, target_text, target.line, target.char, max(target.char, target.end_char))
    return lsp.Location(uri=from_fs_path(target.path) or target.path, range=rng)


# -- the stage table: code lenses and inlay hints -----------------------------------------------------

def _stage_lines(ls: GraphresServer, uri: str) -> list[tuple[int, dict]]:
    """(0-based line, stage row) for the stem and each stage, in this file, from the newest
    version when it compiled (a table from an older text would sit on the wrong lines)."""
    state = ls.states.get(uri)
    if not state or not state.result or state.result.compiled is None:
        return []
    if state.version != ls.workspace.get_text_document(uri).version:
        return []
    compiled = state.result.compiled
    path = to_fs_path(uri) or uri
    out = []
    for row in docs.stage_rows(compiled):
        key = ("stem",) if row["index"] < 0 else ("stages", row["index"])
        span = compiled.spec.doc.span(key)
        if span.line > 0 and docs.is_same_file(span.file, path):
            out.append((span.line - 1, row))
    return out


@server.feature(lsp.TEXT_DOCUMENT_CODE_LENS)
@_guarded
def code_lens(ls: GraphresServer, params: lsp.CodeLensParams) -> list[lsp.CodeLens]:
    lenses = []
    for line, row in _stage_lines(ls, params.text_document.uri):
        rng = lsp.Range(lsp.Position(line, 0), lsp.Position(line, 0))
        lenses.append(lsp.CodeLens(range=rng, command=lsp.Command(title=docs.row_text(row), command="")))
    return lenses


@server.feature(lsp.TEXT_DOCUMENT_INLAY_HINT)
@_guarded
def inlay_hints(ls: GraphresServer, params: lsp.InlayHintParams) -> list[lsp.InlayHint]:
    text, _ = _text(ls, params.text_document.uri)
    lines = text.split("\n")
    by_line: dict[int, list[dict]] = {}
    for line, row in _stage_lines(ls, params.text_document.uri):
        by_line.setdefault(line, []).append(row)
    hints = []
    for line, rows in sorted(by_line.items()):
        if not params.range.start.line <= line <= params.range.end.line or line >= len(lines):
            continue
        if len(rows) == 1:
            label = "# " + docs.row_text(rows[0])
        else:  # the shorthand: every stage comes from the same key
            label = "# " + "; ".join(f"{r['name']} {docs.shape_text(r['shape'])} /{r['stride']}" for r in rows)
        end = client_range(ls, text, line, len(lines[line]), len(lines[line])).end
        hints.append(lsp.InlayHint(position=end, label=label, padding_left=True))
    return hints


def serve() -> None:
    """Run the server on standard input and output until the client says exit."""
    server.start_io()
