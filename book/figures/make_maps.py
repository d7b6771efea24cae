"""Draw the book map: the eleven Parts as boxes, in reading order, in two halves.

Writes, next to this file:

- ``map.svg``: the whole book, pretraining (Parts 0-5) in blue, alignment (Parts 6-10) in green;
- ``map-part0.svg`` ... ``map-part10.svg``: the same picture with Part N in a strong colour and the
  others greyed out, for the top of each Part's first chapter.

Standard library only; the SVG is written as text. To redraw the maps after changing a title or the
layout, run from the repository root::

    python3 book/figures/make_maps.py

and commit the twelve SVG files it rewrites (it takes well under a second).
"""

from pathlib import Path
from xml.sax.saxutils import escape

HERE = Path(__file__).resolve().parent

# (number, title, lines of the title as drawn in the box)
PARTS = [
    (0, "Foundations", ["Foundations"]),
    (1, "The core transformer", ["The core", "transformer"]),
    (2, "Training a tiny LLM", ["Training a", "tiny LLM"]),
    (3, "Modern architecture", ["Modern", "architecture"]),
    (4, "Scaling up", ["Scaling up"]),
    (5, "Mixture of experts", ["Mixture of", "experts"]),
    (6, "Supervised fine-tuning", ["Supervised", "fine-tuning"]),
    (7, "Reward modeling", ["Reward", "modeling"]),
    (8, "RLHF with PPO", ["RLHF with", "PPO"]),
    (9, "RLHF with GRPO", ["RLHF with", "GRPO"]),
    (10, "Beyond (DPO, LoRA, quantization, baselines, research)",
     ["Beyond: DPO, LoRA,", "quantization,", "baselines, research"]),
]
PRETRAINING = range(0, 6)
ALIGNMENT = range(6, 11)

FONT = "DejaVu Sans, Arial, Helvetica, sans-serif"
WIDTH, HEIGHT = 960, 312
BOX_W, BOX_H, GAP = 128, 80, 22
LEFT = (WIDTH - (6 * BOX_W + 5 * GAP)) / 2  # six boxes in the top row, centred
TOP_BAND = (12, 138)  # y from, y to
BOTTOM_BAND = (174, 300)
TOP_BOX_Y = 46
BOTTOM_BOX_Y = 208
CONNECTOR_Y = 156  # the horizontal run of the arrow from Part 5 to Part 6, between the bands

# whole-book colours (the muted fills of the book's diagrams)
FILL = {"pre": "#E8EEF6", "align": "#EAF5EA"}
STROKE = "#555555"
TEXT = "#222222"
# highlighted maps
STRONG_FILL, STRONG_STROKE, STRONG_TEXT = "#2F6DB5", "#1B4477", "#FFFFFF"
MUTED_FILL, MUTED_STROKE, MUTED_TEXT = "#F4F4F4", "#BBBBBB", "#999999"


def box_xy(n):
    """Top-left corner of Part n's box."""
    if n in PRETRAINING:
        return LEFT + n * (BOX_W + GAP), TOP_BOX_Y
    # the five alignment boxes are centred under the six pretraining boxes
    return LEFT + (BOX_W + GAP) / 2 + (n - 6) * (BOX_W + GAP), BOTTOM_BOX_Y


def text(x, y, s, size=12, weight="normal", fill=TEXT, anchor="middle"):
    return (f'<text x="{x:g}" y="{y:g}" font-size="{size}" font-weight="{weight}" fill="{fill}" '
            f'text-anchor="{anchor}">{escape(s)}</text>')


def part_box(n, lines, highlight):
    x, y = box_xy(n)
    half = "pre" if n in PRETRAINING else "align"
    if highlight is None:
        fill, stroke, ink, width = FILL[half], STROKE, TEXT, 1.2
    elif highlight == n:
        fill, stroke, ink, width = STRONG_FILL, STRONG_STROKE, STRONG_TEXT, 2.5
    else:
        fill, stroke, ink, width = MUTED_FILL, MUTED_STROKE, MUTED_TEXT, 1.0
    out = [f'<rect x="{x:g}" y="{y:g}" width="{BOX_W}" height="{BOX_H}" rx="8" fill="{fill}" '
           f'stroke="{stroke}" stroke-width="{width}"/>']
    cx = x + BOX_W / 2
    # "Part N" in bold, then the title lines, as a block centred in the box
    block = 17 + 15 * len(lines)
    top = y + (BOX_H - block) / 2 + 12
    out.append(text(cx, top, f"Part {n}", size=13, weight="bold", fill=ink))
    for i, line in enumerate(lines):
        out.append(text(cx, top + 18 + 15 * i, line, size=11.5 if len(line) > 16 else 12, fill=ink))
    return out


def arrow_colour(highlight):
    return STROKE if highlight is None else "#888888"


def arrows(highlight):
    colour = arrow_colour(highlight)
    out = []
    for n in list(PRETRAINING)[:-1] + list(ALIGNMENT)[:-1]:
        x, y = box_xy(n)
        out.append(f'<line x1="{x + BOX_W + 2:g}" y1="{y + BOX_H / 2:g}" x2="{x + BOX_W + GAP - 3:g}" '
                   f'y2="{y + BOX_H / 2:g}" stroke="{colour}" stroke-width="1.5" marker-end="url(#arrow)"/>')
    # from the end of pretraining (Part 5) round to the start of alignment (Part 6)
    x5, y5 = box_xy(5)
    x6, y6 = box_xy(6)
    a, b = x5 + BOX_W / 2, x6 + BOX_W / 2
    out.append(f'<path d="M {a:g} {y5 + BOX_H + 2:g} V {CONNECTOR_Y:g} H {b:g} V {y6 - 3:g}" fill="none" '
               f'stroke="{colour}" stroke-width="1.5" marker-end="url(#arrow)"/>')
    out.append(text((a + b) / 2, CONNECTOR_Y - 5, "then align the pretrained model", size=11,
                    fill="#555555" if highlight is None else "#888888"))
    return out


def bands():
    out = []
    for (y0, y1), label in [(TOP_BAND, "Pretraining (Parts 0–5): build, train and scale a GPT"),
                            (BOTTOM_BAND, "Alignment (Parts 6–10): turn it into an assistant")]:
        out.append(f'<rect x="12" y="{y0}" width="{WIDTH - 24}" height="{y1 - y0}" rx="10" fill="none" '
                   f'stroke="#999999" stroke-width="1" stroke-dasharray="5 4"/>')
        out.append(text(26, y0 + 20, label, size=13, weight="bold", fill="#444444", anchor="start"))
    return out


def svg(highlight=None):
    if highlight is None:
        title = "Map of the book"
        desc = ("The eleven Parts of the book as boxes joined by arrows in reading order, in two "
                "dashed frames. The top frame, pretraining, holds Parts 0 to 5 from left to right: "
                + "; ".join(f"Part {n}, {t}" for n, t, _ in PARTS[:6])
                + ". An arrow labelled 'then align the pretrained model' runs from Part 5 down and "
                "back to the start of the bottom frame, alignment, which holds Parts 6 to 10 from "
                "left to right: " + "; ".join(f"Part {n}, {t}" for n, t, _ in PARTS[6:]) + ".")
    else:
        t = PARTS[highlight][1]
        title = f"Map of the book: Part {highlight}, {t}"
        half = "pretraining (Parts 0 to 5)" if highlight in PRETRAINING else "alignment (Parts 6 to 10)"
        desc = (f"The map of the book, Parts 0 to 10 in reading order, pretraining in the top row "
                f"and alignment in the bottom row, with Part {highlight}, {t}, highlighted in dark "
                f"blue and the other Parts greyed out. It belongs to the {half} half.")
    body = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="{FONT}">',
        f"<title>{escape(title)}</title>",
        f"<desc>{escape(desc)}</desc>",
        "<defs>",
        '<marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
        f'orient="auto"><path d="M 0 0 L 10 5 L 0 10 z" fill="{arrow_colour(highlight)}"/></marker>',
        "</defs>",
        f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#FFFFFF"/>',
    ]
    body += bands()
    body += arrows(highlight)
    for n, _, lines in PARTS:
        body += part_box(n, lines, highlight)
    body.append("</svg>")
    return "\n".join(body) + "\n"


def main():
    (HERE / "map.svg").write_text(svg(), encoding="utf-8")
    for n, _, _ in PARTS:
        (HERE / f"map-part{n}.svg").write_text(svg(n), encoding="utf-8")
    print(f"wrote map.svg and map-part0.svg ... map-part{PARTS[-1][0]}.svg in {HERE}")


if __name__ == "__main__":
    main()
