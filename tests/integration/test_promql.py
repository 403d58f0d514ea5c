"""The canary analysis PromQL against a real Prometheus server holding known samples (backfilled with promtool)."""

from __future__ import annotations

import dataclasses
import math
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from mlplatform.monitoring.prometheus import PrometheusQueryError, PrometheusUnavailable, query
from mlplatform.rollout.analysis import Decision, StepEvidence, analyse
from mlplatform.rollout.promql import StepQueries, collect_evidence, step_queries
from mlplatform.rollout.settings import CanarySettings
from serving.metrics import LATENCY_BUCKETS, SCORE_BUCKETS

pytestmark = pytest.mark.integration

MODEL = "fraud-detector"
#: Samples every 15 s for 10 minutes from a 2-hour-aligned start (an old, fixed time: results do not depend on
#: the clock); the analysed window is the last 5 minutes, ending on the last sample, so increases are exact.
START = 1_699_999_200
STEP_SECONDS = 15
N_STEPS = 40
AT = START + N_STEPS * STEP_SECONDS
WINDOW_SECONDS = 300
STEPS_IN_WINDOW = WINDOW_SECONDS // STEP_SECONDS  # 20

STABLE = {"model_name": MODEL, "model_version": "1", "role": "stable"}
CANARY = {"model_name": MODEL, "model_version": "2", "role": "canary"}

#: Known increments per 15 s. Counters: (series labels, increment).
REQUESTS = [
    ({**STABLE, "component": "predictor", "outcome": "ok"}, 30),
    ({**STABLE, "component": "predictor", "outcome": "invalid"}, 3),  # counted in requests, not in errors
    ({**STABLE, "component": "predictor", "outcome": "error"}, 0),
    ({**STABLE, "component": "transformer", "outcome": "ok"}, 30),  # the same requests one hop out: not analysed
    ({**CANARY, "component": "predictor", "outcome": "ok"}, 24),
    ({**CANARY, "component": "predictor", "outcome": "error"}, 3),
    ({**CANARY, "component": "predictor", "outcome": "unavailable"}, 3),
    ({**CANARY, "component": "transformer", "outcome": "error"}, 7),  # the transformer: not analysed
]
FALLBACKS = [  # stable never fell back, so it has no series at all (serving creates it on the first fallback)
    ({**CANARY, "component": "predictor", "reason": "non_finite"}, 1),
    ({**CANARY, "component": "transformer", "reason": "features_unavailable"}, 1),
]
#: Histograms: (series labels, bucket bounds, observations per 15 s in each bucket, not cumulative).
LATENCY_EDGES = (*LATENCY_BUCKETS, math.inf)
SCORE_EDGES = (*SCORE_BUCKETS, math.inf)


def _one_bucket(edges: tuple[float, ...], le: float, n: int) -> list[int]:
    return [n if e == le else 0 for e in edges]


def _scores(per_bound: dict[float, int]) -> list[int]:
    return [per_bound.get(e, 0) for e in SCORE_EDGES]


STABLE_SCORES = _scores({0.05: 16, 0.1: 2, 0.5: 1, 1.0: 1})
CANARY_SCORES = _scores({0.05: 4, 0.3: 4, 0.9: 12})
HISTOGRAMS = {
    "mlplatform_inference_stage_seconds": [
        # stable: every request between 3 and 5 ms; canary five times slower (15 to 25 ms)
        (
            {**STABLE, "component": "predictor", "stage": "predict"},
            LATENCY_EDGES,
            _one_bucket(LATENCY_EDGES, 0.005, 15),
        ),
        (
            {**CANARY, "component": "predictor", "stage": "predict"},
            LATENCY_EDGES,
            _one_bucket(LATENCY_EDGES, 0.025, 15),
        ),
        (
            {**CANARY, "component": "predictor", "stage": "features"},
            LATENCY_EDGES,
            _one_bucket(LATENCY_EDGES, 1.0, 15),
        ),
    ],
    "mlplatform_prediction_score": [
        ({**STABLE, "component": "predictor"}, SCORE_EDGES, STABLE_SCORES),
        ({**CANARY, "component": "predictor"}, SCORE_EDGES, CANARY_SCORES),
        ({**CANARY, "component": "transformer"}, SCORE_EDGES, STABLE_SCORES),  # the transformer: not analysed
    ],
}


def _labels(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(bound)


def openmetrics() -> str:
    """Our series with the known increments, as OpenMetrics text with timestamps."""
    times = [START + i * STEP_SECONDS for i in range(N_STEPS + 1)]
    lines = ["# TYPE mlplatform_inference_requests counter"]
    for labels, inc in REQUESTS:
        lines += [f"mlplatform_inference_requests_total{_labels(labels)} {i * inc} {t}" for i, t in enumerate(times)]
    lines.append("# TYPE mlplatform_prediction_fallbacks counter")
    for labels, inc in FALLBACKS:
        lines += [f"mlplatform_prediction_fallbacks_total{_labels(labels)} {i * inc} {t}" for i, t in enumerate(times)]
    for family, series in HISTOGRAMS.items():
        lines.append(f"# TYPE {family} histogram")
        for labels, edges, per_bucket in series:
            cumulative = [sum(per_bucket[: j + 1]) for j in range(len(edges))]
            for le, c in zip(edges, cumulative, strict=True):
                lbl = _labels({**labels, "le": _le(le)})
                lines += [f"{family}_bucket{lbl} {i * c} {t}" for i, t in enumerate(times)]
            lines += [f"{family}_count{_labels(labels)} {i * cumulative[-1]} {t}" for i, t in enumerate(times)]
            lines += [f"{family}_sum{_labels(labels)} 0 {t}" for t in times]
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


def expected_buckets(per_bucket: list[int]) -> tuple[tuple[float, float], ...]:
    return tuple((le, float(sum(per_bucket[: j + 1]) * STEPS_IN_WINDOW)) for j, le in enumerate(SCORE_EDGES))


EXPECTED_STABLE = StepEvidence(
    requests=(30 + 3 + 0) * STEPS_IN_WINDOW,  # 660
    errors=0.0,
    p99_seconds=0.003 + (0.005 - 0.003) * 0.99,  # linear interpolation inside the (3 ms, 5 ms] bucket
    fallbacks=0.0,
    score_buckets=expected_buckets(STABLE_SCORES),
)
EXPECTED_CANARY = StepEvidence(
    requests=(24 + 3 + 3) * STEPS_IN_WINDOW,  # 600
    errors=(3 + 3) * STEPS_IN_WINDOW,  # 120: 20 %
    p99_seconds=0.015 + (0.025 - 0.015) * 0.99,
    fallbacks=(1 + 1) * STEPS_IN_WINDOW,  # 40, both components
    score_buckets=expected_buckets(CANARY_SCORES),
)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; run `make services` (scripts/services.sh installs Prometheus)")
    return path


@pytest.fixture(scope="module")
def prometheus_url(tmp_path_factory: pytest.TempPathFactory, port_finder: Callable[[], int]) -> Iterator[str]:
    """A real Prometheus server whose TSDB holds exactly the known samples; stopped afterwards."""
    promtool, prometheus = _tool("promtool"), _tool("prometheus")
    work = tmp_path_factory.mktemp("prometheus")
    data = work / "samples.om"
    data.write_text(openmetrics())
    tsdb = work / "tsdb"
    backfill = subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(data), str(tsdb)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert backfill.returncode == 0, f"promtool backfill failed: {backfill.stderr}"
    config = work / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1h\nscrape_configs: []\n")  # nothing scraped: only the blocks
    url = f"http://127.0.0.1:{port_finder()}"
    log = (work / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tsdb}",
            # Retention counts back from the newest block, not from the clock; keep the old samples anyway.
            "--storage.tsdb.retention.time=100y",
            f"--web.listen-address={url.removeprefix('http://')}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_ready(url, proc, work / "prometheus.log")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, deadline_seconds: float = 60.0) -> None:
    """Until /-/ready answers 200; fails at once if the server exits, or after the deadline."""
    deadline = time.monotonic() + deadline_seconds
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            try:
                if client.get(f"{url}/-/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            try:  # the pause between two tries is a wait on the process: an exit ends it at once
                proc.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                continue
            pytest.fail(f"prometheus exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
    pytest.fail(f"prometheus not ready after {deadline_seconds:g} s:\n{log.read_text()[-3000:]}")


def _values(samples) -> dict[str, float]:
    return {s.labels.get("le", ""): s.value for s in samples}


@pytest.mark.parametrize(
    ("field", "side", "expected"),
    [
        ("requests", CANARY, {"": EXPECTED_CANARY.requests}),
        ("requests", STABLE, {"": EXPECTED_STABLE.requests}),
        ("errors", CANARY, {"": EXPECTED_CANARY.errors}),
        ("errors", STABLE, {"": 0.0}),
        ("p99_seconds", CANARY, {"": EXPECTED_CANARY.p99_seconds}),
        ("p99_seconds", STABLE, {"": EXPECTED_STABLE.p99_seconds}),
        ("fallbacks", CANARY, {"": EXPECTED_CANARY.fallbacks}),
        ("fallbacks", STABLE, {}),  # no series: nothing ever fell back
        ("score_buckets", CANARY, {_le(le): c for le, c in EXPECTED_CANARY.score_buckets}),
        ("score_buckets", STABLE, {_le(le): c for le, c in EXPECTED_STABLE.score_buckets}),
    ],
)
def test_each_query_returns_the_known_values(prometheus_url: str, field: str, side: dict, expected: dict):
    promql = getattr(step_queries(MODEL, side["model_version"], side["role"], WINDOW_SECONDS), field)
    got = _values(query(prometheus_url, promql, AT))
    assert got == pytest.approx(expected), promql


def test_every_step_query_is_covered_by_a_known_value_test():
    covered = {"requests", "errors", "p99_seconds", "fallbacks", "score_buckets"}
    assert {f.name for f in dataclasses.fields(StepQueries)} == covered


def test_collect_evidence_gives_the_known_evidence_of_each_side(prometheus_url: str):
    for side, expected in ((CANARY, EXPECTED_CANARY), (STABLE, EXPECTED_STABLE)):
        got = collect_evidence(prometheus_url, MODEL, side["model_version"], side["role"], WINDOW_SECONDS, AT)
        assert _flat(got) == pytest.approx(_flat(expected)), side
        assert (got.precision, got.recall) == (None, None)  # labels are not in Prometheus


def _flat(ev: StepEvidence) -> list[float]:
    """The evidence's numbers in one list (pytest.approx compares flat sequences)."""
    scalars = [ev.requests, ev.errors, ev.p99_seconds, ev.fallbacks]
    return [*scalars, *(x for pair in ev.score_buckets for x in pair)]


def test_collect_evidence_of_a_version_never_scraped_is_empty_and_analysis_waits(prometheus_url: str):
    absent = collect_evidence(prometheus_url, MODEL, "9", "canary", WINDOW_SECONDS, AT)
    assert absent == StepEvidence(requests=0.0, errors=0.0, p99_seconds=None, fallbacks=0.0, score_buckets=())
    stable = collect_evidence(prometheus_url, MODEL, "1", "stable", WINDOW_SECONDS, AT)
    assert analyse(absent, stable, CanarySettings()).decision == Decision.WAIT


def test_known_failing_canary_is_rolled_back_on_collected_evidence(prometheus_url: str):
    canary = collect_evidence(prometheus_url, MODEL, "2", "canary", WINDOW_SECONDS, AT)
    stable = collect_evidence(prometheus_url, MODEL, "1", "stable", WINDOW_SECONDS, AT)
    verdict = analyse(canary, stable, CanarySettings())
    assert verdict.decision == Decision.ROLLBACK
    failed = {r.split(":")[0] for r in verdict.reasons}
    assert {"error_rate", "p99_latency_ratio", "score_psi", "score_ks", "fallback_rate"} <= failed


def test_rejected_query_raises_query_error(prometheus_url: str):
    with pytest.raises(PrometheusQueryError, match="bad_data"):
        query(prometheus_url, "sum(", AT)


def test_unreachable_prometheus_raises_unavailable(port_finder: Callable[[], int]):
    url = f"http://127.0.0.1:{port_finder()}"  # nothing listens there
    with pytest.raises(PrometheusUnavailable, match="did not answer"):
        collect_evidence(url, MODEL, "2", "canary", WINDOW_SECONDS, AT, timeout_seconds=2.0)


def test_snapshot_differences_give_the_known_evidence_of_each_side(prometheus_url: str):
    """The rollout's exact evidence: instant counter sums at the window's start and end, differenced (the known
    samples grow linearly, so the difference equals the window's increase without any extrapolation)."""
    from mlplatform.rollout.analysis import between
    from mlplatform.rollout.promql import snapshot

    for side, expected in ((CANARY, EXPECTED_CANARY), (STABLE, EXPECTED_STABLE)):
        before = snapshot(prometheus_url, MODEL, side["model_version"], side["role"], AT - WINDOW_SECONDS)
        after = snapshot(prometheus_url, MODEL, side["model_version"], side["role"], AT)
        assert _flat(between(before, after)) == pytest.approx(_flat(expected)), side


def test_every_snapshot_query_is_used_by_the_snapshot(prometheus_url: str):
    from mlplatform.rollout.analysis import Snapshot
    from mlplatform.rollout.promql import SnapshotQueries, snapshot

    assert len(dataclasses.fields(SnapshotQueries)) == len(dataclasses.fields(Snapshot))
    assert snapshot(prometheus_url, MODEL, "9", "canary", AT) == Snapshot()  # never scraped: all zero
