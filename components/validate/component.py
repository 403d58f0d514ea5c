"""KFP component of the validate step: a thin wrapper around components.validate.step."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from mlplatform.settings import DEFAULT_COMPONENT_IMAGE


@dsl.component(base_image=DEFAULT_COMPONENT_IMAGE, install_kfp_package=False)
def validate_data(
    train: Input[Dataset],
    validation: Input[Dataset],
    test: Input[Dataset],
    trigger: str,
    report: Output[Artifact],
):
    """Validate the splits; a violation fails the run with a message naming the column and rule.

    Args:
        train: Training rows.
        validation: Validation rows.
        test: Test rows.
        trigger: Why the run was started; an alert makes drift against the champion a warning.
        report: The checks and their results (JSON).
    """
    import json
    from dataclasses import asdict
    from pathlib import Path

    from components.validate.step import ValidationRules, champion_reference, run_validate
    from mlplatform.settings import PlatformSettings

    splits = {
        "train": Path(train.path),
        "validation": Path(validation.path),
        "test": Path(test.path),
    }
    settings = PlatformSettings()
    result = run_validate(splits, champion_reference(settings), ValidationRules.from_settings(settings), trigger)
    for warning in result.warnings:
        print(f"warning: {warning}")
    Path(report.path).write_text(json.dumps(asdict(result), indent=2))
    report.metadata.update({"checks": result.checks, "fraud_rates": result.fraud_rates, "warnings": result.warnings})
