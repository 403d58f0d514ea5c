"""Bad input against the running transformer and predictor: never a 5xx, a JSON error on every 4xx, and
valid requests still answered afterwards (hand-written corpus, hypothesis, schemathesis on the v2 spec)."""

from __future__ import annotations

import httpx
import pytest

from tests.reliability.fuzz import (
    Endpoint,
    Tally,
    predictor_v1_requests,
    raw_requests,
    run_corpus,
    run_generated,
    schemathesis_cases,
    send_body,
    send_json,
    total_cases,
    v1_requests,
    v2_requests,
)

pytestmark = pytest.mark.integration

TRANSACTION_COLUMNS = ["customer_id", "merchant_id", "amount", "timestamp", "transaction_id"]
#: Share of the run's generated cases per generator.
SHARES = {
    "transformer_v1": 0.25,
    "transformer_v2": 0.13,
    "predictor_v1": 0.12,
    "predictor_v2": 0.10,
    "raw_bytes": 0.08,
    "schemathesis": 0.26,
}


def _n(name: str) -> int:
    return max(10, int(total_cases() * SHARES[name]))


@pytest.fixture(scope="module")
def client() -> httpx.Client:
    with httpx.Client(timeout=30) as c:
        yield c


def test_hand_written_corpus_gets_4xx_json_errors_on_both_processes(endpoints: list[Endpoint], tally: Tally) -> None:
    run_corpus(endpoints, tally)


def test_generated_v1_transactions_never_crash_the_transformer(
    endpoints: list[Endpoint], tally: Tally, client: httpx.Client
) -> None:
    transformer = endpoints[0]
    send = send_body(transformer, client, "/v1/models/{model}:predict")
    run_generated("transformer:v1", v1_requests(), send, _n("transformer_v1"), tally, seed_value=1)
    transformer.still_answers(client)


def test_generated_v2_columns_never_crash_the_transformer(
    endpoints: list[Endpoint], tally: Tally, client: httpx.Client
) -> None:
    transformer = endpoints[0]
    send = send_body(transformer, client, "/v2/models/{model}/infer")
    run_generated("transformer:v2", v2_requests(TRANSACTION_COLUMNS), send, _n("transformer_v2"), tally, seed_value=2)
    transformer.still_answers(client)


def test_generated_rows_never_crash_the_predictor(
    endpoints: list[Endpoint], tally: Tally, client: httpx.Client
) -> None:
    predictor = endpoints[1]
    v1 = send_body(predictor, client, "/v1/models/{model}:predict")
    run_generated("predictor:v1", predictor_v1_requests(), v1, _n("predictor_v1"), tally, seed_value=3)
    v2 = send_body(predictor, client, "/v2/models/{model}/infer")
    run_generated("predictor:v2", v2_requests(["features"]), v2, _n("predictor_v2"), tally, seed_value=4)
    predictor.still_answers(client)


@pytest.mark.parametrize("route", ["/v1/models/{model}:predict", "/v2/models/{model}/infer"])
def test_arbitrary_bytes_and_content_types_get_4xx(
    endpoints: list[Endpoint], tally: Tally, client: httpx.Client, route: str
) -> None:
    for k, endpoint in enumerate(endpoints):
        send = send_body(endpoint, client, route)
        run_generated(f"{endpoint.name}:raw", raw_requests(), send, _n("raw_bytes") // 4, tally, seed_value=5 + k)
        endpoint.still_answers(client)


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_v2_protocol_spec_cases_never_crash_either_process(
    endpoints: list[Endpoint], tally: Tally, client: httpx.Client, mode: str
) -> None:
    for k, endpoint in enumerate(endpoints):
        cases = schemathesis_cases(endpoint.model, mode)
        name = f"{endpoint.name}:schemathesis-{mode}"
        run_generated(name, cases, send_json(endpoint, client), _n("schemathesis") // 4, tally, seed_value=9 + k)
        endpoint.still_answers(client)
