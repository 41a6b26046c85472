"""`genlab generate`: images from a registered model, for people (the served model's `predict`, as a PNG grid).

The model loads through MLflow (`models:/genlab-ldm@champion` from MLFLOW_TRACKING_URI's registry, or any model
URI) and runs what its `predict` runs, so the images are the ones `mlflow models serve` answers for the same rows:
image i is drawn from (label, SEED + i), with the same checks (serving.check_request) and the same one-line refusals.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from genlab.errors import GenlabError
from genlab.images import save_grid
from genlab.serving import BadRequest, check_request


def generate(model_uri: str, n: int, seed: int, out: Path, *, label: int | None = None, prompt: str | None = None,
             guidance: float | None = None, steps: int | None = None) -> str:
    """Write an n-image grid to `out`; what was written, as one line."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one line out, one line on error
    import mlflow
    from mlflow.exceptions import MlflowException

    if out.suffix.lower() != ".png":
        raise GenlabError(f"-o {out}: expected a .png path")
    rows = pd.DataFrame({"label": [0 if label is None else label] * n, "seed": [seed + i for i in range(n)]})
    if prompt is not None:
        rows["prompt"] = prompt
    params = {k: v for k, v in (("guidance_scale", guidance), ("sample_steps", steps)) if v is not None}
    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except MlflowException as e:  # an unknown model, version or alias: MLflow's own message
        raise GenlabError(f"{model_uri}: {e.message.splitlines()[0]}") from None
    served = model.unwrap_python_model()  # what `predict` runs: its checks, then its sampler
    try:
        labels, seeds, kwargs = check_request(rows, params, served.sampler, served.num_classes, served.defaults)
    except BadRequest as e:
        raise GenlabError(f"{model_uri}: {e}") from None
    save_grid(served.sampler(labels, seeds, **kwargs), out)
    what = f"prompt {prompt!r}" if prompt is not None else f"label {rows['label'][0]}"
    return f"wrote {out}: {n} images from {model_uri}, {what}, seeds {seed}..{seed + n - 1}"
