"""Text prompts for digit labels: training phrasings and a disjoint held-out set for evaluation.

A template has `{word}` (zero..nine) or `{digit}` (0..9). Training draws one template per image from a
torch.Generator, so a run's prompts are reproducible; held-out templates never appear in training
and measure whether the text conditioning generalises to new phrasings.
"""

from __future__ import annotations

import torch

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

TRAIN_TEMPLATES = (
    "a handwritten {word}",
    "the digit {word}",
    "a {digit}",
    "number {word}",
    "handwritten digit {digit}",
    "the number {digit}",
    "a drawing of a {word}",
    "{word}",
)

HELD_OUT_TEMPLATES = (
    "an image of the numeral {word}",
    "{word}, written by hand",
    "a scanned {digit}",
    "the handwritten numeral {digit}",
)


def _fill(template: str, label: int) -> str:
    if not 0 <= label < len(WORDS):
        raise ValueError(f"prompts: label must be in 0..{len(WORDS) - 1}, got {label}")
    return template.format(word=WORDS[label], digit=label)


def train_prompt(label: int, g: torch.Generator) -> str:
    """One training prompt for `label`, its template drawn uniformly from `g`."""
    i = int(torch.randint(len(TRAIN_TEMPLATES), (1,), generator=g))
    return _fill(TRAIN_TEMPLATES[i], int(label))


def train_prompts(labels: torch.Tensor | list[int], g: torch.Generator) -> list[str]:
    """One training prompt per label, templates drawn from `g` (one draw for the whole batch)."""
    labels = [int(y) for y in labels]
    idx = torch.randint(len(TRAIN_TEMPLATES), (len(labels),), generator=g).tolist()
    return [_fill(TRAIN_TEMPLATES[i], y) for i, y in zip(idx, labels, strict=True)]


def all_train_prompts(label: int) -> list[str]:
    """Every training prompt for `label`, in template order (for pre-encoding)."""
    return [_fill(t, int(label)) for t in TRAIN_TEMPLATES]


def heldout_prompts(label: int) -> list[str]:
    """Every held-out prompt for `label`, in template order."""
    return [_fill(t, int(label)) for t in HELD_OUT_TEMPLATES]
