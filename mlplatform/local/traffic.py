"""Local traffic: plausible transactions of known customers and merchants, and a steady client that sends them.

Locally nothing calls the endpoint on its own, so a rollout (or a demo) needs traffic. The transactions
are built from the newest feature rows the online store serves (known entities, amounts around each
customer's average, a few large purchases at risky merchants), timestamped just after the data ends.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlplatform.settings import PlatformSettings

#: Response headers the local splitter adds (mlplatform.local.splitter); plain strings so that importing this module
#: does not import the serving stack.
VERSION_HEADER = "x-mlplatform-model-version"
ROLE_HEADER = "x-mlplatform-role"


def _latest(settings: PlatformSettings) -> tuple[Any, Any, Any]:
    import pandas as pd

    from mlplatform.features.store import source_dir  # feast: seconds to import, only when used

    customers = pd.read_parquet(source_dir(settings.feast_data) / "customer_stats.parquet")
    merchants = pd.read_parquet(source_dir(settings.feast_data) / "merchant_stats.parquet")
    end = customers["event_timestamp"].max()
    when = end.normalize() + pd.Timedelta(hours=14)  # an afternoon: night hours are a fraud signal
    when = when if when > end else when + pd.Timedelta(days=1)
    last_c = customers.sort_values("event_timestamp").groupby("customer_id").tail(1)
    last_m = merchants.sort_values("event_timestamp").groupby("merchant_id").tail(1)
    return last_c, last_m.sort_values("merchant_fraud_rate_30d", ascending=False), when


def demo_transactions(settings: PlatformSettings, n: int = 4) -> list[dict[str, Any]]:
    """A few transactions that show the model at work: ordinary ones, and large ones at risky merchants."""
    import pandas as pd

    customers, risky, when = _latest(settings)
    out = []
    for i, row in enumerate(customers.tail(n).itertuples()):
        ordinary = i % 2 == 0
        merchant = int(risky["merchant_id"].iloc[-1 - i] if ordinary else risky["merchant_id"].iloc[i])
        amount = round(float(row.cust_amount_avg_30d) if ordinary else float(row.cust_amount_avg_30d) * 12 + 500, 2)
        out.append(
            {
                "transaction_id": f"demo-{i}",
                "customer_id": int(row.customer_id),
                "merchant_id": merchant,
                "amount": max(amount, 1.0),
                "timestamp": (when + pd.Timedelta(seconds=i)).isoformat(),
            }
        )
    return out


def sample_transactions(settings: PlatformSettings, n: int, seed: int = 0, risky_share: float = 0.05) -> list[dict]:
    """`n` transactions of known customers and merchants; `risky_share` of them large purchases at risky merchants."""
    import pandas as pd

    customers, merchants, when = _latest(settings)
    rng = np.random.default_rng(seed)
    c_idx = rng.integers(0, len(customers), n)
    risky = rng.random(n) < risky_share
    top = max(1, len(merchants) // 20)
    m_idx = np.where(risky, rng.integers(0, top, n), rng.integers(top, len(merchants), n))
    avg = customers["cust_amount_avg_30d"].to_numpy(dtype=float)[c_idx]
    amount = np.where(risky, avg * 12 + 500, avg * rng.lognormal(0.0, 0.5, n))
    cust_ids = customers["customer_id"].to_numpy()[c_idx]
    merch_ids = merchants["merchant_id"].to_numpy()[m_idx]
    return [
        {
            "transaction_id": f"tx-{seed}-{i}",
            "customer_id": int(cust_ids[i]),
            "merchant_id": int(merch_ids[i]),
            "amount": round(max(float(amount[i]), 1.0), 2),
            "timestamp": (when + pd.Timedelta(seconds=int(i))).isoformat(),
        }
        for i in range(n)
    ]


@dataclass
class Response:
    """One answered (or failed) request as the client saw it."""

    at: float  # monotonic seconds when the answer arrived
    status: int  # HTTP status; 0 when no answer arrived (connection error, client timeout)
    role: str
    version: str
    seconds: float


@dataclass
class TrafficGenerator:
    """Sends transactions, one per request, at a steady rate from a few client threads until stopped.

    Args:
        url: The v1 predict endpoint.
        transactions: Cycled through in order.
        rps: Target requests per second (all threads together).
        workers: Client threads.
        timeout_seconds: Client deadline of one request.
    """

    url: str
    transactions: list[dict[str, Any]]
    rps: float = 50.0
    workers: int = 4
    timeout_seconds: float = 10.0
    responses: list[Response] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _run(self, worker: int) -> None:
        import logging

        import httpx

        # one INFO line per request (httpx's) would bury the caller's log: a pipeline step logs at INFO
        logging.getLogger("httpx").setLevel(logging.WARNING)
        interval = self.workers / self.rps
        next_at = time.monotonic() + worker * interval / self.workers
        i = worker
        with httpx.Client(timeout=self.timeout_seconds) as client:
            while not self._stop.is_set():
                delay = next_at - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    break
                next_at = max(next_at + interval, time.monotonic() - interval)
                tx = self.transactions[i % len(self.transactions)]
                i += self.workers
                start = time.monotonic()
                try:
                    r = client.post(self.url, json={"instances": [tx]})
                    resp = Response(
                        time.monotonic(),
                        r.status_code,
                        r.headers.get(ROLE_HEADER, ""),
                        r.headers.get(VERSION_HEADER, ""),
                        time.monotonic() - start,
                    )
                except httpx.HTTPError:
                    resp = Response(time.monotonic(), 0, "", "", time.monotonic() - start)
                with self._lock:
                    self.responses.append(resp)

    def start(self) -> TrafficGenerator:
        if not self.transactions:
            raise ValueError("no transactions to send")
        self._threads = [threading.Thread(target=self._run, args=(w,), daemon=True) for w in range(self.workers)]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> list[Response]:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.timeout_seconds + 5)
        return list(self.responses)

    def __enter__(self) -> TrafficGenerator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def summary(self, since: float = 0.0) -> dict[str, Any]:
        """Requests by status, and by (role, status class), answered at or after `since` (monotonic)."""
        with self._lock:
            rs = [r for r in self.responses if r.at >= since]
        return {
            "requests": len(rs),
            "by_status": dict(Counter(r.status for r in rs)),
            "by_role": {f"{k[0]}:{k[1]}": v for k, v in Counter((r.role, r.status // 100) for r in rs).items()},
        }
