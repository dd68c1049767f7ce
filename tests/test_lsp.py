"""graphres lsp, end to end: a real LSP client (pygls' LanguageClient) launches
`python -m graphres lsp` as a subprocess and talks to it over stdio.

Nothing here is timed: a wait for a notification only guards against a hung server."""
import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("pygls", reason="the lsp extra (pygls) is not installed")

from lsprotocol import types as lsp  # noqa: E402
from pygls.lsp.client import LanguageClient  # noqa: E402
from pygls.uris import from_fs_path, to_fs_path  # noqa: E402

from conftest import ROOT  # noqa: E402
from graphres.ops import OPS  # noqa: E402

HANG_GUARD_S = 120

SPEC = textwrap.dedent("""\
    graphres: 1
    name: r18
    input: {channels: 3, size: [224, 224]}
    stem: {type: conv7x7, channels: 64}
    stages:
      - {block: basic, blocks: 2, planes: 64}
      - {block: basic, blocks: 2, plnes: 128, stride: 2}
      - {block: basic, blocks: 2, planes: 256, stride: 2}
      - {block: basic, blocks: 2, planes: 512, stride: 2}
    """)
FIXED = SPEC.replace("plnes: 128", "planes: 128")


class Session:
    """A client connected to a fresh server process; collects published diagnostics."""

    def __init__(self) -> None:
        self.client = LanguageClient("graphres-test", "1")
        self.published: dict[str, list[lsp.PublishDiagnosticsParams]] = {}
        self.logs: list[str] = []
        self.changed = asyncio.Condition()
        self.versions: dict[str, int] = {}

        @self.client.feature(lsp.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
        async def on_diagnostics(params: lsp.PublishDiagnosticsParams) -> None:
            async with self.changed:
                self.published.setdefault(params.uri, []).append(params)
                self.changed.notify_all()

        @self.client.feature(lsp.WINDOW_LOG_MESSAGE)
        def on_log(params: lsp.LogMessageParams) -> None:
            self.logs.append(params.message)

    async def start(self, root: Path) -> lsp.InitializeResult:
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        await self.client.start_io(sys.executable, "-m", "graphres", "lsp", env=env, cwd=str(ROOT))
        result = await asyncio.wait_for(self.client.initialize_async(lsp.InitializeParams(
            capabilities=lsp.ClientCapabilities(), root_uri=from_fs_path(str(root)), process_id=os.getpid())),
            HANG_GUARD_S)
        self.client.initialized(lsp.InitializedParams())
        return result

    def open(self, path: Path, text: str) -> str:
        uri = from_fs_path(str(path))
        self.versions[uri] = 1
        self.client.text_document_did_open(lsp.DidOpenTextDocumentParams(
            lsp.TextDocumentItem(uri=uri, language_id="yaml", version=1, text=text)))
        return uri

    def change(self, uri: str, text: str) -> None:
        self.versions[uri] += 1
        self.client.text_document_did_change(lsp.DidChangeTextDocumentParams(
            lsp.VersionedTextDocumentIdentifier(uri=uri, version=self.versions[uri]),
            [lsp.TextDocumentContentChangeWholeDocument(text=text)]))

    async def diagnostics(self, uri: str) -> list[lsp.Diagnostic]:
        """The diagnostics published for the newest version of the document."""
        want = self.versions[uri]

        def arrived() -> bool:
            return any(p.version == want for p in self.published.get(uri, []))

        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(arrived), HANG_GUARD_S)
        return list([p for p in self.published[uri] if p.version == want][-1].diagnostics)

    def at(self, uri: str, line: int, char: int) -> dict:
        return {"text_document": lsp.TextDocumentIdentifier(uri=uri), "position": lsp.Position(line, char)}

    async def hover(self, uri: str, line: int, char: int) -> str | None:
        result = await asyncio.wait_for(self.client.text_document_hover_async(
            lsp.HoverParams(**self.at(uri, line, char))), HANG_GUARD_S)
        return result.contents.value if result else None

    async def complete(self, uri: str, line: int, char: int) -> list[str]:
        result = await asyncio.wait_for(self.client.text_document_completion_async(
            lsp.CompletionParams(**self.at(uri, line, char))), HANG_GUARD_S)
        items = result.items if isinstance(result, lsp.CompletionList) else result
        return [i.label for i in items]

    async def definition(self, uri: str, line: int, char: int):
        result = await asyncio.wait_for(self.client.text_document_definition_async(
            lsp.DefinitionParams(**self.at(uri, line, char))), HANG_GUARD_S)
        return result

    async def stop(self) -> None:
        await asyncio.wait_for(self.client.shutdown_async(None), HANG_GUARD_S)
        self.client.exit(None)
        await asyncio.wait_for(self.client.stop(), HANG_GUARD_S)


def run(scenario, tmp_path):
    async def main():
        s = Session()
        result = await s.start(tmp_path)
        try:
            await scenario(s, result)
        finally:
            await s.stop()
        return s
    return asyncio.run(main())


def test_diagnostics_hover_and_shutdown(tmp_path):
    """The issue's proof: a typo is reported on its line, the fix clears it, hover reads a shape."""
    spec = tmp_path / "r18.yaml"
    spec.write_text(SPEC)

    async def scenario(s: Session, init: lsp.InitializeResult):
        caps = init.capabilities
        assert caps.hover_provider and caps.definition_provider and caps.completion_provider
        assert caps.code_lens_provider is not None and caps.inlay_hint_provider
        uri = s.open(spec, SPEC)
        diags = await s.diagnostics(uri)
        assert [(d.code, d.message, d.range.start.line, d.range.start.character, d.range.end.character,
                 d.severity) for d in diags] == [
            ("E010", "block 'basic' has no parameter 'plnes'", 6, 30, 35, lsp.DiagnosticSeverity.Error),
            ("E012", "block 'basic' needs the parameter 'planes'", 6, 4, 52, lsp.DiagnosticSeverity.Error)]
        assert [r.message for r in diags[0].related_information] == ["hint: did you mean 'planes'?"]
        # the same codes, messages and places as `graphres validate --json`
        out = subprocess.run([sys.executable, "-m", "graphres", "validate", "--json", str(spec)],
                             capture_output=True, text=True, cwd=ROOT)
        import json
        cli = json.loads(out.stdout)["diagnostics"]
        assert [(d["code"], d["message"], d["line"] - 1, d["col"] - 1) for d in cli] == \
            [(d.code, d.message, d.range.start.line, d.range.start.character) for d in diags]

        s.change(uri, FIXED)
        assert await s.diagnostics(uri) == []
        md = await s.hover(uri, 6, 10)  # on layer2's entry
        assert md.splitlines()[:3] == ["**layer2** (basic x2) at input 3x224x224", "",
                                       "- output shape: `128x28x28`"]
        assert "- stride: 8" in md and "- receptive field: 99 px" in md and "- parameters: 525,568" in md
        assert "- MACs: 411,041,792" in md
        for char in (0, 2, 60):  # the indentation, the '- ' and past the end of the entry: the same stage
            assert (await s.hover(uri, 6, char)).startswith("**layer2** (basic x2)")

    run(scenario, tmp_path)


def test_hover_stem_block_type_layer_and_key(tmp_path):
    text = (ROOT / "specs" / "se_resnet18.yaml").read_text()
    spec = tmp_path / "se.yaml"
    spec.write_text(text)
    lines = text.split("\n")
    conv1 = next(i for i, l in enumerate(lines) if "{name: conv1, op: conv" in l)
    block = next(i for i, l in enumerate(lines) if l.strip() == "se_basic:")
    stem = next(i for i, l in enumerate(lines) if l.startswith("stem:"))
    name = next(i for i, l in enumerate(lines) if l.startswith("name:"))

    async def scenario(s: Session, _):
        uri = s.open(spec, text)
        assert await s.diagnostics(uri) == []
        md = await s.hover(uri, stem, 8)
        assert md.splitlines()[0] == "**stem** (conv7x7) at input 3x224x224"
        assert "- output shape: `64x56x56`" in md and "- receptive field: 11 px" in md
        md = await s.hover(uri, conv1, 12)  # a layer of the spec's own block
        assert md.splitlines()[0] == "**se_basic** layer, 8 instances at input 3x224x224"
        assert "| layer1.0.conv1 | conv | 64x56x56 | 4 | 1 | 19 | 36,864 | 115,605,504 |" in md
        assert "| layer4.1.conv1 | conv | 512x7x7 | 32 | 1 |" in md
        md = await s.hover(uri, block, 4)  # the block type
        assert md.splitlines()[0] == ("**se_basic** (block): basic block with a squeeze-and-excitation gate on the "
                                      "residual branch")
        assert "8 instances at input 3x224x224" in md
        md = await s.hover(uri, name, 1)  # a plain key: its meaning, from the schema
        assert md.startswith("`name`: The model's name")
        # the shorthand: the stage table on the backbone
        short = (ROOT / "specs" / "mmdet_faster_rcnn_r50.yaml").read_text()
        depth = next(i for i, l in enumerate(short.split("\n")) if l.strip().startswith("depth:"))
        suri = s.open(tmp_path / "short.yaml", short)
        assert await s.diagnostics(suri) == []
        md = await s.hover(suri, depth, 4)
        assert md.splitlines()[0] == ("**resnet50** at input 3x224x224: 23,508,032 parameters, "
                                      "4,087,136,256 MACs")
        assert "| layer4 | bottleneck x3 | 2048x7x7 | 32 | 1 | 427 | 14,964,736 | 809,238,528 |" in md

    run(scenario, tmp_path)


def test_completion(tmp_path):
    spec = tmp_path / "c.yaml"
    text = textwrap.dedent("""\
        norm: {type: }
        stages:
          - {block: , blocks: 2, planes: 64}
          - {block: basic, blocks: 2, }
        blocks:
          mine:
            out_channels: in_channels
            layers:
              - {op: }
              - {op: conv, }
        """)
    spec.write_text(text)

    async def scenario(s: Session, _):
        uri = s.open(spec, text)
        await s.diagnostics(uri)
        assert await s.complete(uri, 0, 13) == ["BN", "SyncBN", "FrozenBN", "GN", "IN", "BN2d", "IN2d"]
        assert await s.complete(uri, 2, 12) == ["basic", "bottleneck", "mine"]
        assert await s.complete(uri, 3, 30) == ["planes", "stride", "dilation", "frozen", "plugins", "plugin_mode",
                                                 "style", "avg_down"]
        assert await s.complete(uri, 8, 13) == ["conv", "norm", "act", "maxpool", "avgpool", "global_avgpool",
                                                "add", "mul", "concat", "linear"] + list(OPS)[10:]  # then new ops
        assert await s.complete(uri, 9, 19) == ["name", "from", "when", "init", "out", "kernel", "stride", "padding",
                                                "dilation", "groups", "bias"]
        top = await s.complete(uri, 10, 0)
        assert top[:4] == ["graphres", "name", "input", "conv"] and "norm" not in top and "stages" not in top
        # block style, and the shorthand
        buri = s.open(tmp_path / "b.yaml", "norm:\n  type: GN\n  \n")
        await s.diagnostics(buri)
        assert await s.complete(buri, 2, 2) == ["requires_grad", "eps", "momentum", "num_groups", "affine"]
        suri = s.open(tmp_path / "s.yaml", "backbone:\n  type: ResNet\n  depth: \n  \n")
        await s.diagnostics(suri)
        assert await s.complete(suri, 2, 9) == ["18", "34", "50", "101", "152"]
        keys = await s.complete(suri, 3, 2)
        assert keys[:3] == ["in_channels", "stem_channels", "base_channels"] and "groups" not in keys

    run(scenario, tmp_path)


def test_definition(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(textwrap.dedent("""\
        graphres: 1
        blocks:
          tiny:
            params: {planes: int}
            out_channels: planes
            layers:
              - {name: conv1, op: conv, out: planes, kernel: 3}
        stages:
          - {block: tiny, blocks: 1, planes: 8}
        """))
    child = tmp_path / "child.yaml"
    text = textwrap.dedent("""\
        _base_: base.yaml
        stem: {type: deep, channels: 32}
        stages:
          - {block: tiny, blocks: 2, planes: 16}
          - {block: bottleneck, blocks: 1, planes: 8, stride: 2}
        """)
    child.write_text(text)
    builtin = ROOT / "graphres" / "blocks" / "resnet.yaml"
    blines = builtin.read_text().split("\n")

    async def scenario(s: Session, _):
        uri = s.open(child, text)
        assert await s.diagnostics(uri) == []
        loc = await s.definition(uri, 0, 10)  # the _base_ path
        assert (to_fs_path(loc.uri), loc.range.start.line) == (str(base), 0)
        loc = await s.definition(uri, 3, 13)  # a block type of the base file
        assert (to_fs_path(loc.uri), loc.range.start.line, loc.range.start.character) == (str(base), 2, 2)
        loc = await s.definition(uri, 4, 15)  # a built-in block type
        assert Path(to_fs_path(loc.uri)).resolve() == builtin.resolve()
        assert blines[loc.range.start.line].strip() == "bottleneck:"
        loc = await s.definition(uri, 1, 15)  # a built-in stem type
        assert blines[loc.range.start.line].strip() == "deep:"
        assert await s.definition(uri, 3, 30) is None  # a number defines nothing
        assert await s.complete(uri, 3, 12) == ["basic", "bottleneck", "tiny"]  # tiny: from base.yaml

    run(scenario, tmp_path)


def test_stage_table_as_code_lenses_and_inlay_hints(tmp_path):
    spec = tmp_path / "r18.yaml"
    spec.write_text(FIXED)

    async def scenario(s: Session, _):
        uri = s.open(spec, FIXED)
        assert await s.diagnostics(uri) == []
        lenses = await asyncio.wait_for(s.client.text_document_code_lens_async(
            lsp.CodeLensParams(text_document=lsp.TextDocumentIdentifier(uri))), HANG_GUARD_S)
        assert [(c.range.start.line, c.command.title) for c in lenses] == [
            (3, "stem conv7x7: 64x56x56 /4 d1 RF 11, 9.54k params, 118.01M MACs"),
            (5, "layer1 basic x2: 64x56x56 /4 d1 RF 43, 147.97k params, 462.42M MACs"),
            (6, "layer2 basic x2: 128x28x28 /8 d1 RF 99, 525.57k params, 411.04M MACs"),
            (7, "layer3 basic x2: 256x14x14 /16 d1 RF 211, 2.10M params, 411.04M MACs"),
            (8, "layer4 basic x2: 512x7x7 /32 d1 RF 435, 8.39M params, 411.04M MACs")]
        hints = await asyncio.wait_for(s.client.text_document_inlay_hint_async(lsp.InlayHintParams(
            text_document=lsp.TextDocumentIdentifier(uri),
            range=lsp.Range(lsp.Position(0, 0), lsp.Position(20, 0)))), HANG_GUARD_S)
        assert [(h.position.line, h.label) for h in hints][2] == \
            (6, "# layer2 basic x2: 128x28x28 /8 d1 RF 99, 525.57k params, 411.04M MACs")

    run(scenario, tmp_path)


def test_half_typed_files_never_stop_the_server(tmp_path):
    spec = tmp_path / "h.yaml"
    spec.write_text("")
    broken = ["stages:\n  - {block: bott", "stages:\n  - {block: basic, blocks: [", "\t\n", "- 1\n- [",
              "stages: !!python/object:os.system ls\n", "_base_: missing.yaml\n", "_base_: h.yaml\n",
              "blocks: {a: {out_channels: x ** 2, layers: [{op: conv}]}}\nstages: [{block: a, blocks: 1}]\n"]

    async def scenario(s: Session, _):
        uri = s.open(spec, "")
        codes = [[d.code for d in await s.diagnostics(uri)]]
        for text in broken:
            s.change(uri, text)
            for line in range(3):
                for char in (0, 5, 12, 40):
                    await s.hover(uri, line, char)
                    await s.complete(uri, line, char)
                    await s.definition(uri, line, char)
            codes.append([d.code for d in await s.diagnostics(uri)])
        assert codes == [["E012"], ["E001"], ["E001"], ["E001"], ["E001"], ["E003"], ["E005"], ["E005"],
                         ["E022", "E012", "E012"]]
        s.change(uri, FIXED)
        assert await s.diagnostics(uri) == []
        assert "128x28x28" in await s.hover(uri, 6, 10)
        assert not [m for m in s.logs if "internal error" in m]

    run(scenario, tmp_path)


def test_columns_are_counted_in_utf16_units(tmp_path):
    """graphres counts code points; the client (by default) UTF-16 units: '𝛼' is one and two."""
    spec = tmp_path / "u.yaml"
    text = 'norm: {type: "𝛼", requires_grad: 1}\n' + FIXED

    async def scenario(s: Session, _):
        uri = s.open(spec, text)
        diags = await s.diagnostics(uri)
        assert [(d.code, d.range.start.character, d.range.end.character) for d in diags] == [
            ("E013", 14, 16), ("E011", 34, 35)]
        assert (await s.hover(uri, 0, 22)).startswith("`norm.requires_grad`: ")  # after the '𝛼'

    run(scenario, tmp_path)


def test_a_base_file_error_is_shown_at_the_base_line(tmp_path):
    (tmp_path / "base.yaml").write_text("norm: {type: GN}\ngraphres: 1\n")  # a base must be a spec
    child = tmp_path / "child.yaml"
    text = "# a child\n_base_: base.yaml\n" + FIXED

    async def scenario(s: Session, _):
        uri = s.open(child, text)
        diags = await s.diagnostics(uri)
        assert [(d.code, d.message, d.range.start.line) for d in diags] == [
            ("E012", f"{tmp_path / 'base.yaml'}:1:7: missing required key 'norm.num_groups'", 1)]

    run(scenario, tmp_path)


def test_the_server_does_not_import_torch():
    code = ("import sys, graphres.lsp.server, graphres.lsp.document; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout == "False\n", out.stderr
