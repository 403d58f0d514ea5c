"""Delayed labels: emitting them as they become known, the label files, the join, quality per window."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlplatform.data.generator import GeneratorConfig, generate_transactions
from mlplatform.data.labels import Label, LabelFeedError, emit_labels, join_labels, read_labels, write_labels
from mlplatform.monitoring.drift import quality_of


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    return generate_transactions(GeneratorConfig(n_transactions=2_000, n_days=10, seed=9))


def test_emit_labels_gives_only_served_transactions_whose_label_is_known(raw: pd.DataFrame) -> None:
    served = set(raw["transaction_id"].iloc[::2])
    until = raw["event_timestamp"].iloc[len(raw) // 2].to_pydatetime() + timedelta(days=5)
    labels = emit_labels(raw, served, until)
    assert set(labels["transaction_id"]) <= served
    assert (labels["label_timestamp"] <= until).all()
    known = raw[raw["transaction_id"].isin(served) & (raw["label_timestamp"] <= until)]
    assert len(labels) == len(known) > 0
    truth = dict(zip(raw["transaction_id"], raw["is_fraud"], strict=True))
    assert all(truth[t] == lab for t, lab in zip(labels["transaction_id"], labels["label"], strict=True))
    later = emit_labels(raw, served, until + timedelta(days=10), since=until)
    assert not set(later["transaction_id"]) & set(labels["transaction_id"])
    assert (later["label_timestamp"] > until).all()


def test_emit_labels_rejects_naive_times_and_foreign_frames(raw: pd.DataFrame) -> None:
    with pytest.raises(LabelFeedError, match="timezone-aware"):
        emit_labels(raw, [], datetime(2026, 1, 5))
    with pytest.raises(LabelFeedError, match="label_timestamp"):
        emit_labels(raw.drop(columns=["label_timestamp"]), [], datetime(2026, 1, 5, tzinfo=UTC))


def test_label_files_round_trip_and_the_latest_label_wins(tmp_path: Path) -> None:
    t0 = datetime(2026, 2, 1, tzinfo=UTC)
    write_labels(pd.DataFrame({"transaction_id": ["a", "b"], "label": [0, 1], "label_timestamp": [t0, t0]}), tmp_path)
    # a chargeback corrects a's label later; an older duplicate of b does not override it
    write_labels(
        pd.DataFrame(
            {
                "transaction_id": ["a", "b"],
                "label": [1, 0],
                "label_timestamp": [t0 + timedelta(days=3), t0 - timedelta(days=1)],
            }
        ),
        tmp_path,
    )
    assert write_labels(pd.DataFrame(columns=["transaction_id", "label", "label_timestamp"]), tmp_path) is None
    labels = read_labels(tmp_path)
    assert {k: v.label for k, v in labels.items()} == {"a": 1, "b": 1}
    assert labels["a"].label_timestamp_unix_s == (t0 + timedelta(days=3)).timestamp()
    assert not list(tmp_path.glob(".*.tmp"))
    assert read_labels(tmp_path / "absent") == {}


def test_torn_last_line_is_skipped_and_a_bad_line_is_named(tmp_path: Path) -> None:
    good = '{"transaction_id": "a", "label": 1, "label_timestamp": "2026-02-01T00:00:00+00:00"}\n'
    (tmp_path / "labels-1.jsonl").write_text(good + '{"transaction_id": "b", "lab')
    assert set(read_labels(tmp_path)) == {"a"}
    (tmp_path / "labels-2.jsonl").write_text('{"transaction_id": "c", "label": 7, "label_timestamp": "2026-02-01"}\n')
    with pytest.raises(LabelFeedError, match=r"labels-2\.jsonl:1: label must be 0 or 1"):
        read_labels(tmp_path)


def test_join_keeps_only_predictions_with_a_known_label() -> None:
    records = [
        {"record_id": "t1", "transaction_id": "t1", "score": 0.9},
        {"record_id": "t2", "transaction_id": "t2", "score": 0.1},  # label not known yet (late)
        {"record_id": "req-9:0", "transaction_id": None, "score": 0.2},  # no transaction id: never labelled
        {"record_id": "t3", "transaction_id": "t3", "score": 0.4},
        {"record_id": "t1", "transaction_id": "t1", "score": 0.8},  # scored twice (a retry): both count
    ]
    labels = {"t1": Label("t1", 1, 0.0), "t3": Label("t3", 0, 0.0), "t9": Label("t9", 1, 0.0)}
    pairs = join_labels(records, labels)
    assert [(r["score"], y) for r, y in pairs] == [(0.9, 1), (0.4, 0), (0.8, 1)]


def test_quality_on_known_labels() -> None:
    scores = [0.9, 0.8, 0.7, 0.3, 0.2, 0.1]
    truth = [1, 0, 1, 1, 0, 0]
    pairs = [({"score": s}, y) for s, y in zip(scores, truth, strict=True)]
    q = quality_of(pairs, threshold=0.5, min_labelled=1)
    # flagged: 0.9 (tp), 0.8 (fp), 0.7 (tp); missed: 0.3
    assert (q.labelled, q.positives, q.precision, q.recall) == (6, 3, pytest.approx(2 / 3), pytest.approx(2 / 3))
    # average precision: hits at ranks 1, 3, 4 -> (1 + 2/3 + 3/4) / 3
    assert q.pr_auc == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)


def test_quality_is_absent_rather_than_zero_without_evidence() -> None:
    few = quality_of([({"score": 0.9}, 1)], threshold=0.5, min_labelled=2)
    assert (few.labelled, few.positives, few.precision, few.recall, few.pr_auc) == (1, 1, None, None, None)
    negatives = quality_of([({"score": s}, 0) for s in np.linspace(0, 0.4, 10)], threshold=0.5, min_labelled=5)
    assert (negatives.precision, negatives.recall, negatives.pr_auc) == (None, None, None)
