"""Fixtures of the reliability tests: one served model (private Redis, fresh PostgreSQL database) per session."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlplatform.features.compute import MODEL_FEATURES
from mlplatform.local.serving import LocalService
from tests.reliability.fuzz import Endpoint, Tally
from tests.reliability.stack import NAME, TOKEN, Stack, serving_stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A model trained, registered and deployed by the real steps, with its Feast stores (private Redis)."""
    with serving_stack(tmp_path_factory.mktemp("reliability")) as built:
        yield built


@pytest.fixture(scope="session")
def service(stack: Stack) -> LocalService:
    """Predictor + transformer serving the champion with a bearer token (stopped with the stack)."""
    return stack.serve("guarded", auth_token=TOKEN)


@pytest.fixture(scope="session")
def endpoints(stack: Stack, service: LocalService) -> list[Endpoint]:
    """The transformer and the predictor of `service`, each with a valid request of its own."""
    headers = {"authorization": f"Bearer {TOKEN}"}
    valid_tx = {"instances": stack.valid_transactions(2)}
    valid_rows = {"instances": [[0.5] * len(MODEL_FEATURES)]}
    return [
        Endpoint("transformer", service.url, NAME, headers, valid_tx),
        Endpoint("predictor", service.predictor_url, NAME, headers, valid_rows),
    ]


@pytest.fixture(scope="session")
def tally() -> Iterator[Tally]:
    """Counts of every case sent this session; written to MLPLATFORM_RELIABILITY_RESULTS_DIR/fuzz.json if set."""
    counts = Tally()
    yield counts
    results = os.environ.get("MLPLATFORM_RELIABILITY_RESULTS_DIR")
    if results:
        Path(results).mkdir(parents=True, exist_ok=True)
        (Path(results) / "fuzz.json").write_text(json.dumps(counts.as_json(), indent=2) + "\n")
