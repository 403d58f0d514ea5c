"""Distributed train: a Kubeflow Trainer TrainJob (torchrun, DDP) launched and awaited from a pipeline task."""
