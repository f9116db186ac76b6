"""scripts/side_by_side.py: labelled pictures in one row; a missing picture is a one-line error and writes nothing."""

from __future__ import annotations

import subprocess
import sys

from PIL import Image

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "side_by_side.py"


def test_pictures_side_by_side_and_a_missing_one(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    Image.new("RGB", (100, 50), "red").save(a)
    Image.new("RGB", (200, 200), "blue").save(b)
    out = tmp_path / "out" / "row.png"
    run = subprocess.run([sys.executable, str(SCRIPT), str(out), f"first={a}", f"second={b}", "--width", "120"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    row = Image.open(out)
    assert row.size == (2 * 120 + 10, 30 + 120)  # two columns and the gap; labels above the taller picture
    assert row.getpixel((60, 30 + 10))[0] > 200 and row.getpixel((130 + 60, 30 + 60))[2] > 200  # red left, blue right
    missing = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "no.png"), f"x={tmp_path / 'none.png'}"],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "no.png").exists()
