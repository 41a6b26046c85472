"""MLflow pyfunc model, logged "from code": MLflow stores this file, not a pickle.

At load time the network is rebuilt from the safetensors snapshot(s) logged as artifacts.
Input: a DataFrame with integer columns `label` and `seed`, and for a text- or class+text-conditional
diffusion model an optional string column `prompt` (without it, a text model gives each image a held-out
phrasing of its label chosen by its seed, and a class+text model is guided by the label); params
`guidance_scale`, `sample_steps`.
Output: float32 images (N, C, S, S) in [-1, 1].
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

from genlab.sampling import load_sampler


class GenlabSampler(mlflow.pyfunc.PythonModel):
    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        dirs = {k: Path(v) for k, v in context.artifacts.items()}
        family = context.model_config["family"]
        # sampling defaults: the settings the registered version was evaluated with
        self.defaults = {k: context.model_config[k] for k in ("guidance_scale", "steps", "eta", "sampler")
                         if k in context.model_config}
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.sampler = load_sampler(family, dirs, device)

    def predict(self, context: object, model_input: pd.DataFrame, params: dict | None = None) -> np.ndarray:
        params = params or {}
        labels = torch.tensor(model_input["label"].to_numpy(), dtype=torch.long)
        seeds = [int(s) for s in model_input["seed"]]
        kwargs = dict(self.defaults)
        if "guidance_scale" in params:
            kwargs["guidance_scale"] = float(params["guidance_scale"])
        if "sample_steps" in params:
            kwargs["steps"] = int(params["sample_steps"])
        if "prompt" in model_input.columns:  # the sampler refuses prompts if its model takes none
            kwargs["prompts"] = [str(p) for p in model_input["prompt"]]
        return self.sampler(labels, seeds, **kwargs).numpy().astype(np.float32)


mlflow.models.set_model(GenlabSampler())
