"""The ML Test Score (Breck et al. 2017): each of its 28 checks mapped to this project's tests and artefacts.

A check scores as the rubric does: 1 when automated tests cover it and run repeatedly (here: every
`make test`), 0.5 when it is done by hand following documentation, 0 otherwise. A section's score is
the sum of its seven checks; the final score is the minimum over the four sections.

Tests map to a check two ways: explicit pytest node IDs in `CHECKS`, and the marker
`@pytest.mark.mltest("<check id>")` on a test. Either kind only counts when pytest collects it (so a
renamed or deleted test stops counting) and, with `run=True`, only when it passes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlplatform.errors import MlPlatformError
from mlplatform.settings import PROJECT_ROOT

if TYPE_CHECKING:
    import pytest

ROOT = PROJECT_ROOT
SECTIONS = ("data", "model", "infra", "monitor")
SECTION_TITLES = {"data": "Data", "model": "Model", "infra": "Infrastructure", "monitor": "Monitoring"}
_ENV_OUT = "MLPLATFORM_MLTEST_COLLECT_OUT"


class ScoreError(MlPlatformError):
    """The score could not be computed: pytest did not run, or a test is marked with an unknown check."""


@dataclass(frozen=True)
class Check:
    """One rubric check and what covers it here.

    Attributes:
        id: `<section>-<n>` (data-1 .. monitor-7).
        title: The rubric's wording.
        tests: Pytest node IDs (relative to the project root) that automate it.
        manual: A documented manual procedure, as `path#text` (the file must contain the text), or "".
        note: How the mapping reads the check (what the tests show, or what is missing).
    """

    id: str
    title: str
    tests: tuple[str, ...] = ()
    manual: str = ""
    note: str = ""


def _t(module: str, *names: str) -> tuple[str, ...]:
    return tuple(f"tests/{module}::{n}" for n in names)


CHECKS: tuple[Check, ...] = (
    # ---------------------------------------------------------------- data
    Check(
        "data-1",
        "Feature expectations are captured in a schema",
        _t("unit/test_steps.py", "test_validation_passes_on_good_data", "test_validation_failure_names_column_and_rule")
        + _t("unit/test_serving_logic.py", "test_bad_request_is_rejected_naming_the_field"),
        note="data validation step (columns, ranges, nulls) and the serving request schema",
    ),
    Check(
        "data-2",
        "All features are beneficial",
        note="permutation importance of every model feature on the reference run's test window; a feature that "
        "adds nothing measurable fails the test with its figure (tests marked mltest('data-2'))",
    ),
    Check(
        "data-3",
        "No feature's cost is too much",
        note="bytes each feature keeps in the online store, tested; its lookup time beside its importance in "
        "`make bench-features` (benchmarks/results/features.json)",
    ),
    Check(
        "data-4",
        "Features adhere to meta-level requirements",
        _t(
            "unit/test_features.py",
            "test_customer_rows_become_visible_only_after_their_transaction",
            "test_merchant_rate_ignores_labels_younger_than_maturity",
        ),
        note="the requirement checked is no leakage: features only from the past and from matured labels",
    ),
    Check(
        "data-5",
        "The data pipeline has appropriate privacy controls",
        _t("k8s/test_chart.py", "test_credentials_come_from_existing_secrets_and_the_chart_renders_none")
        + _t("reliability/test_security_logs.py", "test_serving_logs_hold_neither_the_token_nor_request_values"),
        note="credentials only by reference; no tokens or request values in serving logs",
    ),
    Check(
        "data-6",
        "New features can be added quickly",
        note="the recipe docs/adding-a-feature.md applied to a copy of the project: features -> training set -> "
        "validate -> train -> transformer and predictor, parity within 1e-6",
    ),
    Check(
        "data-7",
        "All input feature code is tested",
        _t(
            "unit/test_features.py",
            "test_customer_windows_match_a_brute_force_count",
            "test_on_demand_features_are_finite_for_unknown_entities",
            "test_model_input_orders_features_and_fills_defaults",
        ),
    ),
    # ---------------------------------------------------------------- model
    Check(
        "model-1",
        "Model specs are reviewed and submitted",
        _t("integration/test_mlflow_server.py", "test_registers_first_version_as_champion_with_lineage"),
        note="every version carries git commit, data hash and features; the review itself is a person's",
    ),
    Check(
        "model-2",
        "Offline proxy metrics correlate with actual online impact",
        _t("unit/test_monitor_labels.py", "test_quality_on_known_labels")
        + _t("unit/test_canary_decision.py", "test_rollback_when_precision_on_labelled_feedback_is_below_minimum"),
        note="quality on delayed labels of served traffic is computed and gates the canary",
    ),
    Check(
        "model-3",
        "All hyperparameters have been tuned",
        note="`mlplatform tune`: Optuna search over the train step's hyperparameters locally, a Katib Experiment "
        "on a cluster; the pipeline trains with the best configuration of a tuning run",
    ),
    Check(
        "model-4",
        "The impact of model staleness is known",
        manual="monitoring/RUNBOOK.md#MlplatformStaleModel",
        note="measured: PR-AUC lost per week of model age under gradual drift (make bench-staleness); the stale-model "
        "alert's threshold is derived from it and tested against the committed figure",
    ),
    Check(
        "model-5",
        "A simpler model is not better",
        _t("unit/test_steps.py", "test_gate_reasons")
        + _t("unit/test_model.py", "test_model_beats_chance_on_the_test_window"),
        note="the registry gate requires beating the rule baseline's PR-AUC",
    ),
    Check(
        "model-6",
        "Model quality is sufficient on all important data slices",
        note="the registry gate refuses a model worse than the champion on a slice beyond the slice's noise",
    ),
    Check(
        "model-7",
        "The model has been tested for considerations of inclusion",
        note="recall and false-positive rate per synthetic customer segment; the gate refuses a disparity beyond "
        "the documented bound",
    ),
    # ---------------------------------------------------------------- infrastructure
    Check(
        "infra-1",
        "Training is reproducible",
        _t("unit/test_model.py", "test_same_seed_gives_identical_metrics")
        + _t("unit/test_training_checkpoint.py", "test_resumed_run_ends_with_the_weights_of_an_uninterrupted_run"),
    ),
    Check(
        "infra-2",
        "Model specs are unit tested",
        _t("unit/test_model.py", "test_loss_decreases_within_a_few_epochs", "test_training_rejects_mismatched_inputs"),
    ),
    Check(
        "infra-3",
        "The ML pipeline is integration tested",
        _t("e2e/test_local_pipeline.py", "test_first_run_registers_the_champion_with_lineage"),
    ),
    Check(
        "infra-4",
        "Model quality is validated before serving",
        _t("unit/test_steps.py", "test_rejected_model_writes_nothing")
        + _t("integration/test_serving.py", "test_corrupt_artifact_is_refused_before_serving"),
    ),
    Check(
        "infra-5",
        "The model is debuggable",
        _t("integration/test_serving.py", "test_training_serving_parity_within_1e_6"),
        note="one example scored offline and through the live path, feature by feature",
    ),
    Check(
        "infra-6",
        "Models are canaried before serving",
        _t("unit/test_rollout_controller.py", "test_good_canary_is_promoted_through_every_step_after_each_window")
        + _t("unit/test_canary_decision.py", "test_never_promotes_without_evidence"),
    ),
    Check(
        "infra-7",
        "Serving models can be rolled back",
        _t(
            "unit/test_rollout_controller.py",
            "test_rollback_at_the_first_step_where_the_canary_error_rate_exceeds_the_threshold",
        ),
    ),  # fmt: skip
    # ---------------------------------------------------------------- monitoring
    Check(
        "monitor-1",
        "Dependency changes result in notification",
        manual="Makefile#pip-audit",
        note="pip-audit over requirements.lock in `make reliability` (docs/reliability.md), read by a person",
    ),
    Check(
        "monitor-2",
        "Data invariants hold in training and serving inputs",
        _t("unit/test_steps.py", "test_validation_failure_names_column_and_rule")
        + _t("reliability/test_fuzz_endpoints.py", "test_hand_written_corpus_gets_4xx_json_errors_on_both_processes"),
    ),
    Check(
        "monitor-3",
        "Training and serving features compute the same values",
        _t("unit/test_serving_logic.py", "test_online_assembly_matches_the_offline_feature_code")
        + _t("integration/test_serving.py", "test_training_serving_parity_within_1e_6"),
    ),
    Check(
        "monitor-4",
        "Models are not too stale",
        _t("unit/test_alert_rules.py", "test_promtool_unit_tests_of_every_alert_pass"),
        note="MlplatformStaleModel alert at 18 days, the age derived from the staleness benchmark "
        "(monitoring/rules/mlplatform.rules.yaml), unit tested with promtool",
    ),
    Check(
        "monitor-5",
        "Models are numerically stable",
        _t("unit/test_serving_logic.py", "test_predictor_replaces_non_finite_output_with_the_fallback_and_counts_it"),
    ),
    Check(
        "monitor-6",
        "Computing performance has not regressed",
        _t("unit/test_canary_decision.py", "test_rollback_when_canary_is_five_times_slower_than_stable"),
        note="latency regressions roll a canary back; benchmarks (make bench) are compared by hand",
    ),
    Check(
        "monitor-7",
        "Prediction quality has not regressed",
        _t("unit/test_alert_rules.py", "test_promtool_unit_tests_of_every_alert_pass")
        + _t("unit/test_monitor_labels.py", "test_quality_on_known_labels"),
        note="MlplatformQualityDrop alert on labelled traffic",
    ),
)


@dataclass
class CheckScore:
    """How one check scored."""

    id: str
    title: str
    score: float
    how: str  # automated, manual or none
    tests: list[str] = field(default_factory=list)
    missing_tests: list[str] = field(default_factory=list)
    failed_tests: list[str] = field(default_factory=list)
    note: str = ""


class _Collector:
    """pytest plugin: writes every collected node ID, its mltest markers and (when run) its outcome."""

    def __init__(self) -> None:
        self.items: dict[str, list[str]] = {}
        self.outcomes: dict[str, str] = {}

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            self.items[item.nodeid] = [str(m.args[0]) for m in item.iter_markers("mltest") if m.args]

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" or report.outcome != "passed":
            previous = self.outcomes.get(report.nodeid)
            if previous in (None, "passed"):
                self.outcomes[report.nodeid] = report.outcome

    def pytest_sessionfinish(self) -> None:
        out = os.environ.get(_ENV_OUT)
        if out:
            Path(out).write_text(json.dumps({"items": self.items, "outcomes": self.outcomes}))


def pytest_configure(config: pytest.Config) -> None:
    """Entry point of the plugin (`-p mlplatform.mltestscore`)."""
    config.pluginmanager.register(_Collector(), "mltest-collector")


def _pytest(args: list[str], timeout_seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "collected.json"
        env = {**os.environ, _ENV_OUT: str(out)}
        cmd = [sys.executable, "-m", "pytest", "-p", "mlplatform.mltestscore", "-q", "-p", "no:cacheprovider", *args]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_seconds)
        if not out.is_file():
            raise ScoreError(
                f"pytest did not run (exit {proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
            )
        return dict(json.loads(out.read_text()))


def collect(paths: Iterable[str] = ("tests",), timeout_seconds: float = 600) -> dict[str, list[str]]:
    """Node IDs pytest collects under `paths`, each with its mltest check IDs."""
    return dict(_pytest(["--collect-only", *paths], timeout_seconds)["items"])


def mapped_tests(collected: dict[str, list[str]]) -> dict[str, list[str]]:
    """Check ID -> test node IDs, explicit ones first, then the marked ones."""
    mapping = {c.id: list(c.tests) for c in CHECKS}
    for nodeid, checks in collected.items():
        for check in checks:
            if check not in mapping:
                raise ScoreError(f"{nodeid} is marked mltest({check!r}); known checks are data-1 .. monitor-7")
            if nodeid not in mapping[check]:
                mapping[check].append(nodeid)
    return mapping


def _resolves(test: str, collected: dict[str, list[str]]) -> bool:
    """A mapped ID names a collected test, or a parametrized family of them."""
    return test in collected or any(n.startswith(test + "[") for n in collected)


def _manual_documented(manual: str) -> bool:
    path, _, text = manual.partition("#")
    file = ROOT / path
    return bool(manual) and file.is_file() and (not text or text in file.read_text())


def score(run: bool = False, timeout_seconds: float = 3600) -> dict[str, Any]:
    """Score every check; with `run`, execute the mapped tests and count only the passing ones.

    Returns:
        checks (per check), sections (sums), final (minimum of the section sums), and how it was measured.
    """
    collected = collect()
    mapping = mapped_tests(collected)
    outcomes: dict[str, str] = {}
    if run:
        wanted = sorted({t for tests in mapping.values() for t in tests if _resolves(t, collected)})
        outcomes = _pytest(wanted, timeout_seconds)["outcomes"]
    checks: list[CheckScore] = []
    for check in CHECKS:
        tests = mapping[check.id]
        present = [t for t in tests if _resolves(t, collected)]
        missing = [t for t in tests if t not in present]
        failed: list[str] = []
        if run:
            ran = {n: o for n, o in outcomes.items() if any(n == t or n.startswith(t + "[") for t in present)}
            failed = sorted(n for n, o in ran.items() if o != "passed")
            passing = [t for t in present if any(n == t or n.startswith(t + "[") for n in ran) and not any(
                n == t or n.startswith(t + "[") for n in failed)]  # fmt: skip
        else:
            passing = present
        if passing:
            value, how = 1.0, "automated"
        elif _manual_documented(check.manual):
            value, how = 0.5, "manual"
        else:
            value, how = 0.0, "none"
        checks.append(CheckScore(check.id, check.title, value, how, passing, missing, failed, check.note))
    sections = {s: sum(c.score for c in checks if c.id.startswith(s + "-")) for s in SECTIONS}
    return {
        "checks": [asdict(c) for c in checks],
        "sections": sections,
        "final": min(sections.values()),
        "ran_tests": run,
        "reference": "Breck et al. 2017, The ML Test Score: A Rubric for ML Production Readiness",
    }
