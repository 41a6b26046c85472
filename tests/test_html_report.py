"""The HTML report shows every family's samples and curve, and says what the arithmetic grid's rows and columns
are."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
from PIL import Image

from genlab import html_report
from genlab.compare import FAMILIES


def _png(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (4, 4), shade).save(path)


def test_report_has_every_family_and_labels_the_arithmetic(tmp_path: Path) -> None:
    for i, f in enumerate(FAMILIES):
        _png(tmp_path / "samples" / f"{f}.png", 10 * i)
        _png(tmp_path / "models" / f / "loss.png", 100 + i)
    _png(tmp_path / "models" / "vae" / "arithmetic.png", 200)
    page = html_report.build(tmp_path, pd.DataFrame({"family": list(FAMILIES)}), "note", {}, {},
                             ["cat", "dog"])
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", page)
    assert [c for c in captions if c in FAMILIES] == [*FAMILIES, *FAMILIES]  # samples, then curves
    assert page.count("data:image/png;base64") == 2 * len(FAMILIES) + 1
    arithmetic = next(c for c in captions if "arithmetic" in c)
    assert "0 = cat, 1 = dog" in arithmetic and "row r" in arithmetic and "column b" in arithmetic
    missing = html_report.build(tmp_path / "empty", pd.DataFrame(), "note", {}, {})
    assert "<figure>" not in missing  # pictures a run did not make are left out
