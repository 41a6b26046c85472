"""MLflow pyfunc model, logged "from code": MLflow stores this file, not a pickle.

At load time the network is rebuilt from the safetensors snapshot(s) logged as artifacts.
Input: a DataFrame with integer columns `label` and `seed`, and for a text- or class+text-conditional
diffusion model an optional string column `prompt` (without it, a text model gives each image a held-out
phrasing of its label chosen by its seed, and a class+text model is guided by the label); params
`guidance_scale`, `sample_steps`.
Output: float32 images (N, C, S, S) in [-1, 1].

`mlflow models serve` checks column types against the signature; `predict` checks the values (`check_request`), so
a bad request gets HTTP 400 with one line saying what was expected, never a half-made answer or a 500.
"""

from __future__ import annotations

import math
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from genlab.sampling import Sampler, load_sampler

MAX_ROWS = 1024  # images per request: the batch a CPU answers in seconds and a GPU holds in memory
MAX_SEED = 2**63 - 1


class BadRequest(ValueError):
    """A request the model cannot answer as asked: its message says which field and what was expected."""


def _integers(frame: pd.DataFrame, column: str) -> list[int]:
    values = frame[column].tolist()
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        raise BadRequest(f"`{column}`: expected integers, got {values[:3]!r}")
    return [int(v) for v in values]


def check_request(frame: pd.DataFrame, params: dict, sampler: Sampler, num_classes: int | None,
                  defaults: dict) -> tuple[torch.Tensor, list[int], dict]:
    """(labels, seeds, sampler kwargs) of a valid request; anything else raises BadRequest naming the field.
    `num_classes`: the data's classes (0: unlabelled, the model ignores labels; None: not recorded)."""
    if not 1 <= len(frame) <= MAX_ROWS:
        raise BadRequest(f"{len(frame)} rows: expected 1 to {MAX_ROWS} (label, seed) rows per request")
    for column in ("label", "seed"):
        if column not in frame.columns:
            raise BadRequest(f"missing column `{column}`: expected columns label, seed (and prompt)")
    labels, seeds = _integers(frame, "label"), _integers(frame, "seed")
    if num_classes and not all(0 <= y < num_classes for y in labels):
        raise BadRequest(f"`label` {next(y for y in labels if not 0 <= y < num_classes)}: unknown, expected "
                         f"0 to {num_classes - 1}")
    if not all(0 <= s <= MAX_SEED for s in seeds):
        raise BadRequest(f"`seed`: expected integers from 0 to 2**63 - 1, got {min(seeds)}")
    kwargs = dict(defaults)
    text = getattr(sampler, "text", None)
    if "prompt" in frame.columns:
        prompts = frame["prompt"].tolist()
        if text is None:
            raise BadRequest("`prompt`: this model takes no prompts (it is not text-conditional)")
        if not all(isinstance(p, str) and p.strip() for p in prompts):
            raise BadRequest("`prompt`: expected a non-empty string in every row")
        for p in prompts:
            if (n := text.token_count(p)) > text.max_length:
                raise BadRequest(f"`prompt` {p[:40]!r}: {n} tokens, the text encoder takes at most "
                                 f"{text.max_length} ([CLS] and [SEP] included)")
        kwargs["prompts"] = prompts
    if "guidance_scale" in params:
        g = params["guidance_scale"]
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or g < 0:
            raise BadRequest(f"`guidance_scale` {g!r}: expected a number >= 0 (0: unguided, 1: conditional only)")
        kwargs["guidance_scale"] = float(g)
    if "sample_steps" in params:
        steps, most = params["sample_steps"], getattr(sampler, "timesteps", None)
        if isinstance(steps, bool) or not isinstance(steps, (int, float)) or steps != int(steps) or steps < 1:
            raise BadRequest(f"`sample_steps` {steps!r}: expected a whole number >= 1")
        if most is not None and steps > most:
            raise BadRequest(f"`sample_steps` {int(steps)}: at most {most}, the diffusion steps the model was "
                             "trained with")
        kwargs["steps"] = int(steps)
    return torch.tensor(labels, dtype=torch.long), seeds, kwargs


class GenlabSampler(mlflow.pyfunc.PythonModel):
    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        dirs = {k: Path(v) for k, v in context.artifacts.items()}
        family = context.model_config["family"]
        # sampling defaults: the settings the registered version was evaluated with
        self.defaults = {k: context.model_config[k] for k in ("guidance_scale", "steps", "eta", "sampler")
                         if k in context.model_config}
        self.num_classes = context.model_config.get("num_classes")  # None in versions logged before it was
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.sampler = load_sampler(family, dirs, device)

    def predict(self, context: object, model_input: pd.DataFrame, params: dict | None = None) -> np.ndarray:
        try:
            labels, seeds, kwargs = check_request(model_input, params or {}, self.sampler, self.num_classes,
                                                  self.defaults)
        except BadRequest as e:  # the scoring server answers 400 with this message
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from None
        return self.sampler(labels, seeds, **kwargs).numpy().astype(np.float32)


mlflow.models.set_model(GenlabSampler())
