"""Bad input against the Alertmanager webhook receiver (mlplatform.feedback.webhook): no 5xx, a JSON error per 4xx.

HOOK for webhook endpoints: `_webhook_app` builds the receiver's app; add new routes of the receiver to
`ROUTES`. The app runs in-process (Starlette's TestClient, the real app and handlers); its launcher is a
stand-in that starts no training run (`FunctionLauncher` with a no-op), so cases test the HTTP contract only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import strategies as st

from tests.reliability.fuzz import (
    CONTENT_TYPES,
    TEN_MB,
    ContractViolation,
    Tally,
    _dumps,
    _json_values,
    check,
    raw_requests,
    run_generated,
    total_cases,
)

webhook = pytest.importorskip("mlplatform.feedback.webhook", reason="the webhook receiver is not in this checkout")
launchers = pytest.importorskip("mlplatform.feedback.launchers")

#: POST routes of the receiver fuzzed with generated bodies.
ROUTES = ["/alerts"]
TOKEN = "tok-WEBHOOK-51c2"


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    from fastapi.testclient import TestClient

    settings = webhook.WebhookSettings(auth_token=TOKEN, cooldown_seconds=3600)
    retrainer = webhook.Retrainer(settings, launchers.FunctionLauncher(lambda params: None))
    with TestClient(webhook.create_app(retrainer, settings), raise_server_exceptions=False) as test_client:
        test_client.headers["authorization"] = f"Bearer {TOKEN}"
        yield test_client


def _alert(draw: st.DrawFn) -> Any:
    alert: dict[str, Any] = {
        "status": draw(st.sampled_from(["firing", "resolved", "", "FIRING"]) | _json_values),
        "labels": draw(
            st.fixed_dictionaries({"alertname": st.sampled_from(["MlplatformFeatureDrift", "X"]) | _json_values})
            | _json_values
        ),
        "annotations": draw(st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=2) | _json_values),
        "startsAt": draw(st.just("2026-11-26T10:00:00Z") | st.text(max_size=25) | _json_values),
        "endsAt": draw(st.just("0001-01-01T00:00:00Z") | _json_values),
        "fingerprint": draw(st.text(max_size=16) | _json_values),
        "generatorURL": draw(st.text(max_size=16)),
    }
    for key in draw(st.sets(st.sampled_from(sorted(alert)), max_size=2)):
        alert.pop(key)
    return alert


@st.composite
def payloads(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    """Alertmanager v4 notifications with fields broken, dropped or of the wrong type."""
    payload: dict[str, Any] = {
        "version": draw(st.just("4") | _json_values),
        "groupKey": draw(st.text(max_size=10) | _json_values),
        "status": draw(st.sampled_from(["firing", "resolved"]) | _json_values),
        "receiver": "mlplatform",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager",
        "alerts": draw(st.lists(st.builds(lambda: None).flatmap(lambda _: st.composite(_alert)()), max_size=3)),
    }
    for key in draw(st.sets(st.sampled_from(sorted(payload)), max_size=2)):
        payload.pop(key)
    body = draw(st.just(payload) | _json_values)
    return _dumps(body), {"content-type": draw(st.sampled_from(CONTENT_TYPES[:2]))}


def _send(client: Any, route: str, tally: Tally) -> Any:
    def send(case: tuple[bytes, dict[str, str]]) -> int:
        body, headers = case
        status = check(client.post(route, content=body, headers=headers), f"webhook POST {route} {body[:120]!r}")
        tally.add("webhook", status)
        return status

    return send


@pytest.mark.parametrize("route", ROUTES)
def test_generated_notifications_never_crash_the_webhook(client: Any, tally: Tally, route: str) -> None:
    n = max(10, total_cases() // 20)
    run_generated("webhook:payloads", payloads(), _send(client, route, Tally()), n, tally, seed_value=31)
    run_generated("webhook:raw", raw_requests(), _send(client, route, Tally()), n // 2, tally, seed_value=32)
    for body, headers in [
        (b"{", {"content-type": "application/json"}),
        (b"\xff\xfe", {"content-type": "application/json"}),
        (b" " * TEN_MB, {"content-type": "application/json"}),
        (json.dumps({"version": "4", "alerts": [{"status": float("nan")}]}, allow_nan=True).encode(), {}),
    ]:
        tally.add("corpus:webhook", check(client.post(route, content=body, headers=headers), f"webhook {body[:40]!r}"))
    if client.get("/healthz").status_code != 200:
        raise ContractViolation("the webhook no longer answers /healthz")
