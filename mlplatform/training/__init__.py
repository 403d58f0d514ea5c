"""Training: the model, the PyTorch loop (single process and data-parallel) and evaluation."""
