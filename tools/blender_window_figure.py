"""The README's Blender window pictures: the real-window session's screenshots, tiled and labelled.

    .venv/bin/python tools/blender_window_figure.py SESSION_DIR --out docs/img/blender_window.png

SESSION_DIR is what tests/gui/blender_session.py wrote (results.json and its screenshots), e.g. the
folder of a `pytest tests/test_blender_gui.py` run (its tmp folder `gui0`), or run the session itself:

    EMOTALKER_ENV=.venv xvfb-run -a -s "-screen 0 1280x800x24" blender --factory-startup \\
        --python tests/gui/blender_session.py -- SESSION_DIR emotalker/data/demo_avatar emotalker/data/demo_speech.wav
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image, ImageDraw

SHOTS = (("solid", "Solid: the proxy mesh"), ("rendered", "Rendered: EmoTalker Splats, frame {frame}"),
         ("scrubbed", "Rendered, scrubbed to frame {frame}"), ("orthographic", "Rendered, orthographic view, frame {frame}"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("session", type=Path)
    ap.add_argument("--out", type=Path, default=Path("docs/img/blender_window.png"))
    ap.add_argument("--scale", type=float, default=0.5)
    args = ap.parse_args()
    results = json.loads((args.session / "results.json").read_text())
    tiles = []
    for key, label in SHOTS:
        image = Image.open(args.session / f"{key}.png").convert("RGB")
        image = image.resize((round(image.width * args.scale), round(image.height * args.scale)), Image.LANCZOS)
        frame = results.get(f"{key}_view", {}).get("frame", "")
        ImageDraw.Draw(image).text((40, 30), label.format(frame=frame), fill=(255, 220, 120))
        tiles.append(image)
    w, h = tiles[0].size
    sheet = Image.new("RGB", (2 * w + 6, 2 * h + 6), (20, 20, 20))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % 2) * (w + 6), (i // 2) * (h + 6)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, optimize=True)
    print(f"wrote {args.out} ({sheet.width}x{sheet.height}) from {results.get('blender')}")


if __name__ == "__main__":
    main()
