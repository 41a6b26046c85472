"""Pictures a person would rather look at than read: sample grids and loss curves."""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from genlab.data.store import to_uint8  # noqa: E402
from genlab.paths import atomic_write  # noqa: E402


def save_grid(images: torch.Tensor, path: Path, nrow: int | None = None, scale: int = 4) -> None:
    """(N, C, S, S) in [-1, 1] -> one PNG, `nrow` images a row, each upscaled `scale` times."""
    n, c, s, _ = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    pad = 1
    canvas = torch.full((c, rows * (s + pad) + pad, nrow * (s + pad) + pad), 255, dtype=torch.uint8)
    for i, img in enumerate(to_uint8(images.cpu())):
        r, k = divmod(i, nrow)
        canvas[:, pad + r * (s + pad): pad + r * (s + pad) + s, pad + k * (s + pad): pad + k * (s + pad) + s] = img
    arr = canvas.permute(1, 2, 0).numpy()
    pil = Image.fromarray(arr[:, :, 0] if c == 1 else arr, mode="L" if c == 1 else "RGB")
    pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    pil.save(buffer, format="png")
    atomic_write(path, buffer.getvalue())


def class_rows(labels: torch.Tensor, per_class: int, max_classes: int | None = None) -> torch.Tensor:
    """Indices into a labelled sample set for a grid with one class a row: the first `per_class` images of each
    class (fewer if a class has fewer), for up to `max_classes` classes spread evenly over all (None: every
    class). Labels may come in any order."""
    classes = labels.unique()
    if max_classes is not None and max_classes < len(classes):
        classes = classes[torch.linspace(0, len(classes) - 1, max_classes).round().long()]
    return torch.cat([(labels == c).nonzero().flatten()[:per_class] for c in classes])


def save_class_grid(images: torch.Tensor, labels: torch.Tensor, path: Path, per_class: int,
                    max_classes: int | None = None) -> None:
    """A sample set as a picture: a row per class (`class_rows`); with fewer than two classes the first 64
    images, 8 a row."""
    classes, counts = labels.unique(return_counts=True)
    if len(classes) < 2:
        save_grid(images[:64], path, nrow=8)
        return
    per_class = min(per_class, int(counts.min()))
    save_grid(images[class_rows(labels, per_class, max_classes)], path, nrow=per_class)


def save_curves(history: pd.DataFrame, path: Path, title: str) -> None:
    """Every loss column against images seen, one panel each."""
    cols = [c for c in history.columns if c != "images_seen"]
    fig, axes = plt.subplots(1, len(cols), figsize=(4 * len(cols), 3), squeeze=False)
    for ax, col in zip(axes[0], cols, strict=True):
        ax.plot(history["images_seen"], history[col])
        ax.set_xlabel("images seen")
        ax.set_title(col)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def save_figure(fig: plt.Figure, path: Path) -> None:
    """A matplotlib figure as PNG through `atomic_write`; the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, buffer.getvalue())


def save_tradeoff(table: pd.DataFrame, path: Path) -> None:
    """FID against accuracy, one point per guidance scale (columns guidance_scale, fid, class_accuracy), and a
    second line for prompts when the table has prompt_fid and prompt_accuracy."""
    fig, ax = plt.subplots(figsize=(5, 4))
    series = [("class_accuracy", "fid", "labels")]
    if "prompt_fid" in table:
        series.append(("prompt_accuracy", "prompt_fid", "held-out prompts"))
    for acc_key, fid_key, name in series:
        acc, f = table[acc_key], table[fid_key]
        ax.plot(acc, f, "o-", label=name)
        for w, x, y in zip(table["guidance_scale"], acc, f, strict=True):
            ax.annotate(f"w={w:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if len(series) > 1:
        ax.legend()
    ax.set_xlabel("class accuracy (evaluator)")
    ax.set_ylabel("FID (evaluator features)")
    ax.set_title("LDM: guidance scale trade-off")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
