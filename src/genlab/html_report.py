"""One self-contained HTML page per pipeline run: the comparison table, sample grids, latent-space
pictures, training curves and the guidance trade-off, with every picture embedded (base64)."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

from genlab.compare import FAMILIES
from genlab.paths import atomic_write

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}figure{display:inline-block;
margin:0 1em 1em 0;vertical-align:top}figcaption{font-size:90%;color:#444}img{image-rendering:pixelated;
max-width:520px}.note{color:#a40}"""


def _img(path: Path, caption: str) -> str:
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def arithmetic_caption(class_names: list[str]) -> str:
    """What the class-arithmetic grid's rows and columns are (the picture itself has no text)."""
    names = ", ".join(f"{i} = {n}" for i, n in enumerate(class_names)) or "the classes in order"
    return ("concept arithmetic: row r starts with a test image of concept r (its class; for shapes, its colour), "
            f"then column b shows decode(z - mean(r) + mean(b)); rows and columns in concept order ({names})")


def build(root: Path, table: pd.DataFrame, note: str, protocol: dict[str, str], decisions: dict,
          class_names: list[str] | None = None) -> str:
    """The report's HTML: every family's samples and curve; pictures that a run did not produce are left out."""
    captions = {"arithmetic": arithmetic_caption(class_names or [])}
    sections = [
        ("Samples (one row per class)", [(root / "samples" / f"{f}.png", f) for f in FAMILIES]),
        ("Guidance trade-off", [(root / "reports" / "guidance" / "fid_vs_accuracy.png", "FID vs class accuracy")]),
        ("Latent space (VAE)", [(root / "models" / "vae" / f"{n}.png", captions.get(n, n.replace("_", " ")))
                                for n in ("reconstructions", "interpolation_linear", "interpolation_spherical",
                                          "traversal", "arithmetic", "prior_vae_vs_ae")]),
        ("Training curves (against images seen)", [(root / "models" / m / "loss.png", m) for m in (
            "evaluator", *FAMILIES)]),
    ]
    promo = "".join(f"<li>{html.escape(f)}: v{d.get('version')} — {'promoted' if d.get('promoted') else 'kept'}"
                    f" ({html.escape(str(d.get('reason')))})</li>" for f, d in decisions.items())
    proto = "".join(f"<li>{html.escape(k)}: <code>{html.escape(v)}</code></li>" for k, v in protocol.items())
    body = [f"<h1>genlab run report</h1><p class=note>{html.escape(note)}</p>",
            "<h2>Comparison</h2>", table.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep=""),
            f"<h3>Protocol</h3><ul>{proto}</ul><h3>Registry</h3><ul>{promo}</ul>"]
    for title, images in sections:
        figures = "".join(_img(p, c) for p, c in images)
        if figures:
            body.append(f"<h2>{html.escape(title)}</h2>{figures}")
    return f"<!doctype html><html><head><meta charset=utf-8><title>genlab report</title><style>{STYLE}</style>" \
           f"</head><body>{''.join(body)}</body></html>"


def write(path: Path, page: str) -> Path:
    atomic_write(path, page)
    return path
