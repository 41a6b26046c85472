"""genlab: a reproducible pipeline that trains and compares VAE, latent diffusion and GAN models."""

import os

# Offline hygiene: no telemetry from the tools genlab drives.
for _key, _value in {
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "HF_HUB_OFFLINE": "1",
}.items():
    os.environ.setdefault(_key, _value)

__version__ = "0.1.0"
