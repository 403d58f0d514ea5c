"""Train: fit the PyTorch MLP (CUDA when available), log the run to MLflow, save weights without pickle."""
