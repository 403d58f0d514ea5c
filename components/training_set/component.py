"""KFP component of the training set step: a thin wrapper around components.training_set.step."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from mlplatform.settings import DEFAULT_COMPONENT_IMAGE


@dsl.component(base_image=DEFAULT_COMPONENT_IMAGE, install_kfp_package=False)
def training_set(
    raw: Input[Dataset],
    feature_state: Input[Artifact],
    validation_days: int,
    test_days: int,
    warmup_days: int,
    train: Output[Dataset],
    validation: Output[Dataset],
    test: Output[Dataset],
):
    """Point-in-time training set from the offline store, split by time.

    Args:
        raw: The raw snapshot (labelled events).
        feature_state: The applied feature repo (orders this step after the features step).
        validation_days: Days before the test window used for validation.
        test_days: Last days of the data held out for testing.
        warmup_days: First days of the data left out of training (aggregates still filling).
        train: Training rows.
        validation: Validation rows.
        test: Test rows.
    """
    from dataclasses import asdict
    from pathlib import Path

    from components.training_set.step import run_training_set
    from mlplatform.settings import PlatformSettings

    result = run_training_set(
        Path(raw.path),
        PlatformSettings(),
        validation_days,
        test_days,
        Path(train.path),
        Path(validation.path),
        Path(test.path),
        warmup_days,
    )
    for art in (train, validation, test):
        art.metadata.update(asdict(result))
