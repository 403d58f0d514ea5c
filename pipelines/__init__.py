"""Pipeline definitions (DSL only) and the single compile entry point."""

from __future__ import annotations

from pathlib import Path


def compile_pipeline(output: Path, name: str = "training") -> Path:
    """Compile a pipeline ("training", or "distributed_training": multi-node TrainJob) to KFP IR YAML at `output`."""
    import importlib

    from kfp import compiler

    pipelines = {"training": "training_pipeline", "distributed_training": "distributed_training_pipeline"}
    if name not in pipelines:
        raise ValueError(f"unknown pipeline {name!r}; choose one of {', '.join(pipelines)}")
    pipeline = getattr(importlib.import_module(f"pipelines.{name}"), pipelines[name])
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline, str(output))
    return output
