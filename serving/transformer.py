"""The transformer: transactions in, fraud scores out, with features from the Feast online store.

KServe runs it in front of the predictor (a separate container on a cluster, a separate process
locally). Per request it validates the transactions (`serving.schema`), looks up the customer and
merchant features in the online store with a deadline (`mlplatform.features.online`), computes the on-demand
features with the same function the offline store uses (`mlplatform.features.compute.on_demand_features`), builds
the model input in training order, calls the predictor (collocated over the tensor hop, `serving.tensor_hop`; in
separate pods over HTTP), and answers score, decision and model version. Every answered transaction is appended to
the prediction log.

Unknown customers or merchants are scored with default features (`FEATURE_DEFAULTS`) and flagged
`unknown_customer` / `unknown_merchant`. When the online store fails or misses its deadline the
answer is, per `feature_store_failure`, defaults plus the flag `features_unavailable`, or a 503.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
from kserve import InferOutput, InferRequest, InferResponse, Model, model_server
from kserve.errors import InvalidInput

from mlplatform.events import PREDICTIONS, TRANSACTIONS, Publisher
from mlplatform.features.compute import (
    CUSTOMER_FEATURES,
    MERCHANT_FEATURES,
    MODEL_FEATURES,
    expire_customers,
    model_input_arrays,
    on_demand_arrays,
)
from mlplatform.features.online import OnlineReader
from mlplatform.features.stream_events import transaction_event
from mlplatform.monitoring.prediction_log import PredictionLog
from mlplatform.processes import init_process
from serving.app import serve
from serving.errors import InvalidRequest, ServiceUnavailable
from serving.metrics import ServingMetrics
from serving.schema import Transaction, parse_v1, parse_v2_columns
from serving.settings import ServingSettings
from serving.tensor_hop import INVALID, OK, HopError, TensorClient

CUSTOMER_VIEW, MERCHANT_VIEW = "customer_stats", "merchant_stats"
FEATURE_REFS = [f"{CUSTOMER_VIEW}:{f}" for f in CUSTOMER_FEATURES] + [f"{MERCHANT_VIEW}:{f}" for f in MERCHANT_FEATURES]


@dataclass
class Scoring:
    """One request on its way through preprocess -> predict -> postprocess."""

    request_id: str
    protocol: str  # v1 or v2
    transactions: list[Transaction]
    features: dict[str, np.ndarray]
    rows: np.ndarray
    flags: list[list[str]]
    started: float
    scores: np.ndarray | None = None
    fallback: list[bool] = field(default_factory=list)
    model_version: str = "unknown"
    role: str = "stable"  # the answering predictor's: on a cluster one transformer fronts stable and canary
    threshold: float = 0.5


def assemble_features(transactions: list[Transaction], online: dict[str, list[Any]] | None) -> dict[str, np.ndarray]:
    """The feature columns for validated transactions and their online features.

    Args:
        transactions: The request.
        online: Feature name -> one value per transaction (None where the store had nothing), or None
            when the store could not be read (every feature then takes its default).

    Returns:
        Request fields, store features and on-demand features as columns, one value per transaction.
    """
    n = len(transactions)
    columns: dict[str, Any] = {
        "amount": np.fromiter((t.amount for t in transactions), np.float64, n),
        "event_unix_s": np.fromiter((t.event_unix_s for t in transactions), np.float64, n),
    }
    for name in (*CUSTOMER_FEATURES, *MERCHANT_FEATURES):
        values = online.get(name) if online is not None else None
        columns[name] = values if values is not None else [None] * n
    columns.update(on_demand_arrays(columns))
    return columns


class FraudTransformer(Model):
    """Feature lookup and request/response handling in front of the predictor.

    Args:
        name: Model name (the predictor serves the same name).
        settings: Serving settings.
        store: An open Feast store (tests inject one); None opens the one the settings name in `load`.
        metrics: Where to count; defaults to the process's registry.
    """

    def __init__(
        self,
        name: str,
        settings: ServingSettings,
        store: Any | None = None,
        metrics: ServingMetrics | None = None,
    ) -> None:
        super().__init__(name)
        self.settings = settings
        self.store = store
        self.metrics = metrics or ServingMetrics(name, settings.model_version, settings.role, "transformer")
        self.log: PredictionLog | None = None
        self.events: Publisher | None = None
        self._session: Any = None  # aiohttp.ClientSession to the predictor, created in the server's loop
        # collocated: the predictor's tensor hop instead of HTTP
        self.hop = TensorClient(settings.predictor_socket) if settings.predictor_socket is not None else None
        self.reader: OnlineReader | None = None  # opened in `load`

    def load(self) -> bool:
        """Open the feature store and the prediction log."""
        if self.store is None:
            from mlplatform.features.store import (  # feast: seconds to import, only when used
                default_repo_path,
                open_store,
            )

            repo = self.settings.feast_repo_path or default_repo_path()
            data_dir = self.settings.feast_data_dir or repo
            self.store = open_store(repo, data_dir, self.settings.feast_config_file)
        self.store.refresh_registry()
        self.reader = OnlineReader(self.store, FEATURE_REFS, lean=self.settings.lean_online_reads)
        # warm-up: the first lookup loads registry objects and opens connections; no request should pay for it
        self.store.get_online_features(features=FEATURE_REFS, entity_rows=[{"customer_id": 0, "merchant_id": 0}])
        if self.settings.prediction_log_dir is not None:
            labels = self.metrics.labels
            self.log = PredictionLog(
                self.settings.prediction_log_dir,
                max_bytes=self.settings.prediction_log_max_bytes,
                max_age_seconds=self.settings.prediction_log_max_age_seconds,
                flush_seconds=self.settings.prediction_log_flush_seconds,
                on_written=lambda k: self.metrics.log_records.labels(**labels).inc(k),
                on_error=lambda e: self.metrics.log_errors.labels(**labels).inc(),
            ).start()
        if self.settings.kafka_bootstrap_servers is not None:
            assert self.settings.event_spool_dir is not None  # ServingSettings requires it with Kafka
            labels = self.metrics.labels
            self.events = Publisher(
                self.settings.kafka_bootstrap_servers,
                self.settings.event_spool_dir,
                config=self.settings.kafka_client_config(),
                on_delivery_error=lambda e: self.metrics.event_delivery_errors.labels(**labels).inc(),
                topic_prefix=self.settings.kafka_topic_prefix,
            )
            self.metrics.event_backlog.labels(**labels).set_function(self.events.backlog)
        self.metrics.info("n/a")
        self.ready = True
        return self.ready

    def stop(self) -> None:
        """Write out the prediction log (a record appended later is still written, synchronously)."""
        if self.log is not None:
            self.log.flush()
        super().stop()

    def close(self) -> None:
        """Final flush of the prediction log, and of the events (what Kafka did not take stays spooled on disk for
        the next process); called once the server has stopped."""
        if self.log is not None:
            self.log.close()
        if self.events is not None:
            self.events.close()

    async def _online_features(self, transactions: list[Transaction]) -> tuple[dict[str, list[Any]] | None, bool]:
        """Feature values per transaction, and whether the store failed (then None)."""
        entity_rows = [{"customer_id": t.customer_id, "merchant_id": t.merchant_id} for t in transactions]
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self.settings.feature_timeout_seconds):  # no extra task, unlike wait_for
                values = await self.reader.read(entity_rows)
        except TimeoutError:
            reason = "timeout"
        except Exception:  # the store's client raises its own types (redis, sqlite, grpc)
            reason = "error"
        else:
            self.metrics.feature_lookup_seconds.labels(**self.metrics.labels).observe(time.perf_counter() - start)
            return values, False
        self.metrics.store_error(reason)
        if self.settings.feature_store_failure == "reject":
            raise ServiceUnavailable("feature_store", f"online feature lookup failed ({reason})")
        return None, True

    def _parse(self, payload: dict[str, Any] | InferRequest) -> tuple[list[Transaction], str]:
        s = self.settings
        if isinstance(payload, InferRequest):
            columns: dict[str, list[Any]] = {}
            for item in payload.inputs:
                data = item.data
                if not isinstance(data, list):
                    raise InvalidRequest(f"inputs.{item.name}", "must carry its data as a JSON list")
                columns[item.name] = [v.decode() if isinstance(v, bytes) else v for v in data]
            return parse_v2_columns(columns, s.max_batch_size, s.max_amount), "v2"
        return parse_v1(payload, s.max_batch_size, s.max_amount), "v1"

    async def preprocess(self, payload: dict[str, Any] | InferRequest, headers: dict[str, str] | None = None) -> Any:
        started = time.perf_counter()
        try:
            transactions, protocol = self._parse(payload)
        except InvalidInput:
            self.metrics.request("invalid")
            raise
        self.metrics.stage("validate", time.perf_counter() - started)
        online, failed = await self._online_features(transactions)
        flags: list[list[str]] = [[] for _ in transactions]
        if failed:
            self.metrics.fallback("features_unavailable", len(transactions))
            for f in flags:
                f.append("features_unavailable")
        else:
            assert online is not None
            expire_customers(online, [t.event_unix_s for t in transactions])  # as the training sets' join does
            for i, (c, m) in enumerate(zip(online["cust_txn_count_30d"], online["merchant_category"], strict=True)):
                if c is None:
                    flags[i].append("unknown_customer")
                if m is None:
                    flags[i].append("unknown_merchant")
            misses_c = sum("unknown_customer" in f for f in flags)
            misses_m = sum("unknown_merchant" in f for f in flags)
            if misses_c:
                self.metrics.miss("customer", misses_c)
            if misses_m:
                self.metrics.miss("merchant", misses_m)
        features = assemble_features(transactions, online)
        self.metrics.stage("features", time.perf_counter() - started)
        request_id = (headers or {}).get("x-request-id") or uuid.uuid4().hex
        return Scoring(
            request_id=request_id[:128],
            protocol=protocol,
            transactions=transactions,
            features=features,
            rows=model_input_arrays(features, dtype=np.float64),  # the log keeps exact values; the model casts
            flags=flags,
            started=started,
        )

    async def _call_predictor(self, body: bytes, headers: dict[str, str]) -> Any:
        """POST a v1 request to the predictor with the settings' deadline.

        aiohttp with its own timeout, not KServe's httpx client under `asyncio.wait_for`: a request
        cancelled inside httpx's connection pool can leave the pool stuck, and then every later call
        times out although the predictor is healthy.
        """
        import aiohttp

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.settings.max_inflight_requests),
                timeout=aiohttp.ClientTimeout(total=self.settings.predictor_timeout_seconds),
            )
        url = f"{self.predictor_config.predictor_base_url}/v1/models/{self.name}:predict"
        try:
            async with self._session.post(url, data=body, headers=headers) as response:
                content = await response.read()
                if response.status != 200:
                    raise ServiceUnavailable("predictor", f"answered {response.status}")
                return orjson.loads(content)
        except TimeoutError:
            raise ServiceUnavailable("predictor", "no answer within the deadline") from None
        except aiohttp.ClientError as exc:
            raise ServiceUnavailable("predictor", f"unreachable ({type(exc).__name__})") from None
        except orjson.JSONDecodeError:
            raise ServiceUnavailable("predictor", "answered something that is not JSON") from None

    async def _call_hop(self, rows: np.ndarray) -> dict[str, Any]:
        """Score rows over the collocated predictor's tensor hop (serving/tensor_hop.py) with the settings' deadline;
        the answer in the shape of the predictor's v1 response, failures as `_call_predictor`'s."""
        assert self.hop is not None
        try:
            answer = await self.hop.score(rows, self.settings.predictor_timeout_seconds)
        except TimeoutError:
            raise ServiceUnavailable("predictor", "no answer within the deadline") from None
        except HopError as exc:
            raise ServiceUnavailable("predictor", f"unreachable ({exc})") from None
        if answer.status != OK:
            status = 400 if answer.status == INVALID else 500  # what the v1 route answers for the same failure
            raise ServiceUnavailable("predictor", f"answered {status}: {answer.message[:200]}")
        return {"predictions": answer.scores, "fallback": answer.fallback, **self.hop.hello}

    def validate(self, payload: Any) -> Any:
        return payload  # preprocess has validated the request and built the predictor's input

    async def predict(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        scoring: Scoring = payload
        start = time.perf_counter()
        try:
            if self.hop is not None:
                response = await self._call_hop(scoring.rows)
            else:
                forward = {"x-request-id": scoring.request_id, "content-type": "application/json"}
                if self.settings.auth_token is not None:  # a predictor given the same token checks it too
                    forward["authorization"] = f"Bearer {self.settings.auth_token.get_secret_value()}"
                response = await self._call_predictor(orjson.dumps({"instances": scoring.rows.tolist()}), forward)
        except ServiceUnavailable:
            self.metrics.request("unavailable")
            raise
        predictions = response.get("predictions") if isinstance(response, dict) else None
        if not isinstance(predictions, list | np.ndarray) or len(predictions) != len(scoring.transactions):
            self.metrics.request("error")
            raise ServiceUnavailable("predictor", "answered an unexpected response")
        scoring.scores = np.asarray(predictions, dtype=np.float64)
        scoring.fallback = [bool(b) for b in response.get("fallback", [False] * len(predictions))]
        scoring.model_version = str(response.get("model_version", "unknown"))
        scoring.role = str(response.get("role") or self.settings.role)
        scoring.threshold = float(response.get("threshold") or 0.5)
        self.metrics.stage("predict", time.perf_counter() - start)
        return scoring

    def postprocess(
        self, result: Any, headers: dict[str, str] | None = None, response_headers: dict[str, str] | None = None
    ) -> dict[str, Any] | InferResponse:
        scoring: Scoring = result
        assert scoring.scores is not None
        for flags, fell_back in zip(scoring.flags, scoring.fallback, strict=True):
            if fell_back:
                flags.append("fallback_score")
        decisions = (scoring.scores >= scoring.threshold).tolist()
        scores = scoring.scores.tolist()
        self._log(scoring, scores, decisions)
        self.metrics.scores(scores)
        self.metrics.stage("total", time.perf_counter() - scoring.started)
        self.metrics.request("ok")
        if scoring.protocol == "v2":
            n = len(scores)
            return InferResponse(
                model_name=self.name,
                model_version=scoring.model_version,
                infer_outputs=[
                    InferOutput("score", [n], "FP64", scores),
                    InferOutput("is_fraud", [n], "BOOL", decisions),
                    InferOutput("flags", [n], "BYTES", [",".join(f) for f in scoring.flags]),
                ],
                response_id=scoring.request_id,
            )
        return {
            "request_id": scoring.request_id,
            "model_name": self.name,
            "model_version": scoring.model_version,
            "role": scoring.role,
            "predictions": [
                {
                    "transaction_id": t.transaction_id,
                    "score": s,
                    "is_fraud": d,
                    "threshold": scoring.threshold,
                    "flags": f,
                }
                for t, s, d, f in zip(scoring.transactions, scores, decisions, scoring.flags, strict=True)
            ],
        }

    def _log(self, scoring: Scoring, scores: list[float], decisions: list[bool]) -> None:
        """Every answered transaction to the prediction log and, where Kafka is configured, to the event stream
        (the same record on the predictions topic, the transaction on the transactions topic; key: customer)."""
        if self.log is None and self.events is None:
            return
        now = datetime.now(UTC).isoformat()
        rows = scoring.rows.tolist()
        records = [
            {
                "request_id": scoring.request_id,
                "record_id": t.transaction_id or f"{scoring.request_id}:{i}",
                "transaction_id": t.transaction_id,
                "served_at": now,
                "event_unix_s": t.event_unix_s,
                "model_name": self.name,
                "model_version": scoring.model_version,
                "role": scoring.role,
                "customer_id": t.customer_id,
                "merchant_id": t.merchant_id,
                "amount": t.amount,
                "features": dict(zip(MODEL_FEATURES, rows[i], strict=True)),
                "score": scores[i],
                "is_fraud": decisions[i],
                "flags": scoring.flags[i],
            }
            for i, t in enumerate(scoring.transactions)
        ]
        if self.log is not None:
            self.log.append(records)
        if self.events is not None:
            categories = scoring.features["merchant_category"]  # the stream feature processor's category shares
            for r, category in zip(records, categories, strict=True):
                self.events.publish(PREDICTIONS, r["customer_id"], r)
                transaction = transaction_event(
                    r["record_id"],
                    r["transaction_id"],
                    r["customer_id"],
                    r["merchant_id"],
                    None if category is None else int(category),
                    r["amount"],
                    r["event_unix_s"],
                )
                self.events.publish(TRANSACTIONS, r["customer_id"], transaction)


def build_parser() -> argparse.ArgumentParser:
    """KServe's model server flags (incl. --predictor_host) plus the transformer's own."""
    return argparse.ArgumentParser(parents=[model_server.parser], description=__doc__)


def main(argv: list[str] | None = None) -> None:
    """Entry point: `python -m serving.transformer --model_name fraud-detector --predictor_host HOST:PORT`."""
    init_process()

    args = build_parser().parse_args(argv)
    if not args.predictor_host:
        raise SystemExit("--predictor_host is required (KServe sets it on a cluster)")
    settings = ServingSettings()
    model = FraudTransformer(args.model_name, settings)
    model.load()
    try:
        serve(model, args, settings)
    finally:
        model.close()


if __name__ == "__main__":
    main()
