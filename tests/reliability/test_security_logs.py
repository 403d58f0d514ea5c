"""Serving logs hold neither the bearer token nor request values, after valid, invalid and unauthorized requests."""

from __future__ import annotations

import httpx
import pytest

from mlplatform.features.compute import MODEL_FEATURES
from mlplatform.local.serving import LocalService
from tests.reliability.stack import TOKEN, Stack

pytestmark = pytest.mark.integration

#: Distinctive request values: none may appear in a log line.
CANARY_TXN = "LEAKCANARY-9d41e7"
CANARY_AMOUNT = 4242.4217
CANARY_CUSTOMER = 987_654_321_123


def test_serving_logs_hold_neither_the_token_nor_request_values(stack: Stack, service: LocalService) -> None:
    tx = stack.valid_transactions(1)[0]
    good = {"instances": [{**tx, "amount": CANARY_AMOUNT, "transaction_id": CANARY_TXN}]}
    unknown = {"instances": [{**tx, "customer_id": CANARY_CUSTOMER, "transaction_id": CANARY_TXN + "-u"}]}
    bad = {"instances": [{**tx, "amount": CANARY_AMOUNT, "card": CANARY_TXN}]}
    auth = {"authorization": f"Bearer {TOKEN}"}
    with httpx.Client(timeout=10) as client:
        assert client.post(service.predict_url, json=good, headers=auth).status_code == 200
        assert client.post(service.predict_url, json=unknown, headers=auth).status_code == 200
        assert client.post(service.predict_url, json=bad, headers=auth).status_code == 400
        assert client.post(service.predict_url, json=good).status_code == 401
        wrong = {"authorization": f"Bearer {TOKEN}-wrong"}
        assert client.post(service.predict_url, json=good, headers=wrong).status_code == 401
        n = len(MODEL_FEATURES)
        v2 = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, n], "data": [CANARY_AMOUNT] * n}]}
        assert client.post(f"{service.predictor_url}/v2/models/{service.model_name}/infer", json=v2, headers=auth)
    logs = {p.name: p.read_text(errors="replace") for p in service.log_dir.glob("*.log")}
    assert set(logs) == {"predictor.log", "transformer.log"}
    for name, text in logs.items():
        assert text.strip(), f"{name} is empty: the check would prove nothing"
        for secret in (TOKEN, CANARY_TXN, str(CANARY_AMOUNT), str(CANARY_CUSTOMER)):
            assert secret not in text, f"{secret!r} appears in {name}"
