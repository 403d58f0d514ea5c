"""Redis (the online store) stops mid-load: the transformer answers from default features flagged
`features_unavailable` (setting `fallback`) or 503 with Retry-After (setting `reject`), and recovers
when Redis returns. The Redis is the stack's private one (never the shared service)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import httpx
import pytest

from mlplatform.local.serving import LocalService
from tests.reliability.stack import TOKEN, Stack, record_result

pytestmark = pytest.mark.integration

TOKEN_HEADER = "authorization"


class Load:
    """Closed-loop load from one thread: each answer's status and flags, with the time it came back."""

    def __init__(self, url: str, body: dict[str, Any], headers: dict[str, str]) -> None:
        self.url, self.body, self.headers = url, body, headers
        self.answers: list[tuple[float, int, list[str], str | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self._stop.is_set():
                try:
                    r = client.post(self.url, json=self.body, headers=self.headers)
                except httpx.HTTPError as exc:
                    self.answers.append((time.monotonic(), 0, [], type(exc).__name__))
                    continue
                body = r.json()
                flags = body["predictions"][0]["flags"] if r.status_code == 200 else []
                self.answers.append((time.monotonic(), r.status_code, flags, r.headers.get("retry-after")))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def wait_for(self, predicate: Any, timeout_seconds: float = 30.0) -> float:
        """Seconds until an answer after now satisfies `predicate` (fails the test past the timeout)."""
        start = time.monotonic()
        seen = len(self.answers)
        while time.monotonic() - start < timeout_seconds:
            if any(predicate(a) for a in self.answers[seen:]):
                return time.monotonic() - start
            time.sleep(0.02)  # poll of the answers list; the load thread keeps sending
        pytest.fail(f"no matching answer within {timeout_seconds} s; last: {self.answers[-3:]}")


def _outage(stack: Stack, services: dict[str, LocalService], token: str) -> dict[str, Any]:
    body = {"instances": stack.valid_transactions(1)}
    headers = {TOKEN_HEADER: f"Bearer {token}"}
    loads = {mode: Load(s.predict_url, body, headers) for mode, s in services.items()}
    for load in loads.values():
        load.__enter__()
    try:
        for load in loads.values():  # healthy first: real features
            load.wait_for(lambda a: a[1] == 200 and a[2] == [])
        killed_at = time.monotonic()
        stack.redis.kill()
        degraded = {
            "fallback": loads["fallback"].wait_for(lambda a: a[1] == 200 and "features_unavailable" in a[2]),
            "reject": loads["reject"].wait_for(lambda a: a[1] == 503 and a[3] is not None),
        }
        time.sleep(1.0)  # a second of load during the outage
        stack.redis.start()
        recovered = {mode: load.wait_for(lambda a: a[1] == 200 and a[2] == []) for mode, load in loads.items()}
    finally:
        if stack.redis.proc is None or stack.redis.proc.poll() is not None:
            stack.redis.start()
        for load in loads.values():
            load.__exit__()
    summary: dict[str, Any] = {"degraded_after_seconds": degraded, "recovered_after_restart_seconds": recovered}
    for mode, load in loads.items():
        during = [a for a in load.answers if a[0] > killed_at]
        summary[mode] = {
            "answers": len(load.answers),
            "statuses": {str(k): v for k, v in Counter(a[1] for a in load.answers).items()},
            "flagged_features_unavailable": sum("features_unavailable" in a[2] for a in load.answers),
            "answers_after_kill": len(during),
        }
    return summary


def test_redis_outage_falls_back_or_rejects_per_setting_and_recovers(stack: Stack, service: LocalService) -> None:
    reject = stack.serve("reject", auth_token=TOKEN, feature_store_failure="reject")
    summary = _outage(stack, {"fallback": service, "reject": reject}, TOKEN)
    record_result("fault_redis", summary)
    fallback = summary["fallback"]
    assert set(fallback["statuses"]) == {"200"}, fallback  # never an error while Redis is away
    assert fallback["flagged_features_unavailable"] > 0
    assert set(summary["reject"]["statuses"]) <= {"200", "503"}, summary["reject"]
