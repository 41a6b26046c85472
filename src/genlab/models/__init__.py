"""Networks: pure torch, no MLflow/Prefect/DVC."""
