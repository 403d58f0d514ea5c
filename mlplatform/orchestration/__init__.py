"""Running the training pipeline: locally with kfp.local, or on a Kubeflow Pipelines endpoint."""
