"""Pipeline definitions (DSL only) and the single compile entry point."""

from __future__ import annotations

from pathlib import Path


def compile_pipeline(output: Path) -> Path:
    """Compile the training pipeline to KFP IR YAML at `output`."""
    from kfp import compiler

    from pipelines.training import training_pipeline

    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(training_pipeline, str(output))
    return output
