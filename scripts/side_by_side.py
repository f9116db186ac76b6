"""Pictures side by side, each under its label, as one PNG (e.g. the same swap grid of several runs).

    python scripts/side_by_side.py OUT.png LABEL=PATH.png [LABEL=PATH.png ...] [--width 420]

Each picture is scaled to --width pixels wide (aspect kept) and labelled on top; a missing file is a one-line
error (exit 2) and nothing is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("pictures", nargs="+", help="LABEL=PATH.png")
    p.add_argument("--width", type=int, default=420)
    args = p.parse_args(argv)
    from PIL import Image, ImageDraw, ImageFont

    items = []
    for spec in args.pictures:
        label, sep, path = spec.partition("=")
        if not sep or not Path(path).is_file():
            print(f"side_by_side: error: {spec!r} is not LABEL=PATH of an existing picture", file=sys.stderr)
            return 2
        im = Image.open(path).convert("RGB")
        items.append((label, im.resize((args.width, round(im.height * args.width / im.width)), Image.LANCZOS)))
    font = ImageFont.load_default(size=18)
    top, gap = 30, 10
    height = top + max(im.height for _, im in items)
    canvas = Image.new("RGB", (len(items) * (args.width + gap) - gap, height), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (label, im) in enumerate(items):
        x = i * (args.width + gap)
        canvas.paste(im, (x, top))
        draw.text((x + args.width // 2, top // 2), label, fill="black", font=font, anchor="mm")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
