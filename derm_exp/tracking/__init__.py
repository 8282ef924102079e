"""MLflow tracking: runs, params, metrics, artifacts and the model registry."""
