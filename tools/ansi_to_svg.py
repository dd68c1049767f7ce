"""Tools: draw a terminal screen captured with ``tmux capture-pane -p -e`` (text with ANSI colours)
as an SVG image, so a real editor session can be shown in the docs (docs/editor-neovim.svg).

    python tools/ansi_to_svg.py screen.ansi -o docs/editor-neovim.svg --title "graphres lsp in Neovim"
"""
from __future__ import annotations

import argparse
import html
import re

BASE16 = ["#000000", "#cd0000", "#00cd00", "#cdcd00", "#0000ee", "#cd00cd", "#00cdcd", "#e5e5e5",
          "#7f7f7f", "#ff0000", "#00ff00", "#ffff00", "#5c5cff", "#ff00ff", "#00ffff", "#ffffff"]
FG, BG = "#d0d0d0", "#1c1c1c"
CELL_W, CELL_H, FONT = 8.4, 17, 14


def color256(n: int) -> str:
    if n < 16:
        return BASE16[n]
    if n < 232:
        n -= 16
        steps = [0, 95, 135, 175, 215, 255]
        return "#%02x%02x%02x" % (steps[n // 36], steps[n // 6 % 6], steps[n % 6])
    level = 8 + (n - 232) * 10
    return "#%02x%02x%02x" % (level, level, level)


def parse(text: str) -> list[list[tuple[str, str, str, bool]]]:
    """Rows of cells (character, foreground, background, bold); the colours carry across lines."""
    fg, bg, bold = FG, BG, False
    rows = []
    for line in text.rstrip("\n").split("\n"):
        row = []
        for token in re.split(r"(\x1b\[[0-9;]*m)", line):
            m = re.fullmatch(r"\x1b\[([0-9;]*)m", token)
            if not m:
                row += [(ch, fg, bg, bold) for ch in token]
                continue
            codes = [int(c) if c else 0 for c in m.group(1).split(";")]
            i = 0
            while i < len(codes):
                c = codes[i]
                if c == 0:
                    fg, bg, bold = FG, BG, False
                elif c == 1:
                    bold = True
                elif c == 22:
                    bold = False
                elif 30 <= c <= 37:
                    fg = BASE16[c - 30]
                elif 90 <= c <= 97:
                    fg = BASE16[c - 90 + 8]
                elif 40 <= c <= 47:
                    bg = BASE16[c - 40]
                elif 100 <= c <= 107:
                    bg = BASE16[c - 100 + 8]
                elif c == 39:
                    fg = FG
                elif c == 49:
                    bg = BG
                elif c in (38, 48) and i + 2 < len(codes) and codes[i + 1] == 5:
                    value = color256(codes[i + 2])
                    fg, bg = (value, bg) if c == 38 else (fg, value)
                    i += 2
                elif c in (38, 48) and i + 4 < len(codes) and codes[i + 1] == 2:
                    value = "#%02x%02x%02x" % tuple(codes[i + 2:i + 5])
                    fg, bg = (value, bg) if c == 38 else (fg, value)
                    i += 4
                i += 1
        rows.append(row)
    return rows


def to_svg(rows, title: str) -> str:
    width = max((len(r) for r in rows), default=0)
    top = 28
    w, h = width * CELL_W + 16, len(rows) * CELL_H + top + 10
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0f}" height="{h:.0f}" '
           f'viewBox="0 0 {w:.0f} {h:.0f}" font-family="DejaVu Sans Mono, Menlo, Consolas, monospace" '
           f'font-size="{FONT}">',
           f'<rect width="100%" height="100%" rx="6" fill="{BG}"/>',
           f'<text x="8" y="18" fill="#9e9e9e" font-size="12">{html.escape(title)}</text>']
    for y, row in enumerate(rows):
        base = top + y * CELL_H
        x = 0
        while x < len(row):  # runs of one style
            ch, fg, bg, bold = row[x]
            end = x
            while end < len(row) and row[end][1:] == (fg, bg, bold):
                end += 1
            text = "".join(c for c, *_ in row[x:end])
            px = 8 + x * CELL_W
            if bg != BG:
                out.append(f'<rect x="{px:.1f}" y="{base:.0f}" width="{(end - x) * CELL_W:.1f}" '
                           f'height="{CELL_H}" fill="{bg}"/>')
            if text.strip():
                weight = ' font-weight="bold"' if bold else ""
                out.append(f'<text x="{px:.1f}" y="{base + CELL_H - 4:.0f}" fill="{fg}"{weight} '
                           f'textLength="{(end - x) * CELL_W:.1f}" lengthAdjust="spacingAndGlyphs" xml:space="preserve">{html.escape(text)}</text>')
            x = end
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("screen", help="the output of tmux capture-pane -p -e")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--title", default="")
    args = p.parse_args()
    with open(args.screen, encoding="utf-8") as f:
        rows = parse(f.read())
    with open(args.output, "w", encoding="utf-8") as f:
        f.write(to_svg(rows, args.title))


if __name__ == "__main__":
    main()
