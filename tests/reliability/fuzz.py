"""Bad-input harness: a hand-written corpus and generated cases (hypothesis, schemathesis) against real endpoints.

Every case is one HTTP request to a running process. The contract checked on each answer: no 5xx, and a
4xx carries a JSON object naming the error (`error`, or FastAPI's `detail` for unknown routes/methods).
After each batch a valid request must still be answered 200. Counts per target and per status are
returned (and written to JSON by `make reliability`).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from mlplatform.features.compute import MODEL_FEATURES

#: Total generated cases of one run; `make test` runs a few hundred, `make reliability` >= 10,000.
DEFAULT_CASES = 400
#: Columns of the predictor's v2 `features` input.
N_FEATURES = len(MODEL_FEATURES)
SPEC = Path(__file__).resolve().parents[3] / "shared" / "upstream" / "kserve" / "rest_predict_v2.yaml"
TEN_MB = 10 * 1024 * 1024
JSON = {"content-type": "application/json"}
CONTENT_TYPES = [
    "application/json",
    "application/json; charset=utf-8",
    "text/plain",
    "application/octet-stream",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=xyz",
    "application/xml",
    "",
]


def total_cases() -> int:
    """Generated cases for this run (MLPLATFORM_RELIABILITY_FUZZ_CASES, default a few hundred)."""
    return int(os.environ.get("MLPLATFORM_RELIABILITY_FUZZ_CASES", DEFAULT_CASES))


class ContractViolation(AssertionError):
    """An answer broke the bad-input contract (5xx, or a 4xx without a JSON error)."""


@dataclass
class Tally:
    """Cases sent and statuses seen, per target."""

    cases: Counter[str] = field(default_factory=Counter)
    statuses: dict[str, Counter[int]] = field(default_factory=dict)

    def add(self, target: str, status: int) -> None:
        self.cases[target] += 1
        self.statuses.setdefault(target, Counter())[status] += 1

    def as_json(self) -> dict[str, Any]:
        return {
            "total_cases": sum(self.cases.values()),
            "cases": dict(self.cases),
            "statuses": {t: {str(k): v for k, v in sorted(c.items())} for t, c in self.statuses.items()},
            "server_errors": sum(n for c in self.statuses.values() for s, n in c.items() if s >= 500),
        }


def check(response: httpx.Response, what: str) -> int:
    """Raise ContractViolation unless the answer is a success or a 4xx with a JSON error; return the status."""
    status = response.status_code
    if status >= 500:
        raise ContractViolation(f"{what}: {status} {response.text[:300]}")
    if status >= 400:
        try:
            body = response.json()
        except ValueError:
            raise ContractViolation(f"{what}: {status} without a JSON body: {response.text[:200]!r}") from None
        if not isinstance(body, dict) or not ({"error", "detail"} & set(body)):
            raise ContractViolation(f"{what}: {status} JSON without an error field: {response.text[:200]}")
    return status


@dataclass
class Endpoint:
    """One serving process under test.

    Attributes:
        name: transformer or predictor (a tally key).
        base_url: http://host:port.
        model: Model name on the paths.
        headers: Sent with every request (the bearer token).
        valid: A valid v1 body, sent after each batch (must answer 200).
    """

    name: str
    base_url: str
    model: str
    headers: dict[str, str]
    valid: dict[str, Any]

    def send(self, client: httpx.Client, method: str, path: str, content: bytes, headers: dict[str, str]) -> int:
        url = self.base_url + path.replace("{model}", self.model)
        response = client.request(method, url, content=content, headers={**self.headers, **headers})
        return check(response, f"{self.name} {method} {path} {content[:120]!r} {headers}")

    def still_answers(self, client: httpx.Client) -> None:
        url = f"{self.base_url}/v1/models/{self.model}:predict"
        response = client.post(url, json=self.valid, headers=self.headers)
        if response.status_code != 200:
            raise ContractViolation(f"{self.name} no longer answers a valid request: {response.status_code}")


# ---------------------------------------------------------------- hand-written corpus
def _tx(**override: Any) -> dict[str, Any]:
    tx: dict[str, Any] = {"customer_id": 1, "merchant_id": 2, "amount": 12.5, "timestamp": "2026-02-10T00:10:00Z"}
    tx.update(override)
    return {k: v for k, v in tx.items() if v is not ...}


def _v1(*txs: dict[str, Any]) -> bytes:
    return json.dumps({"instances": list(txs)}).encode()


def _v2(*inputs: tuple[str, str, list[Any]]) -> bytes:
    return json.dumps(
        {"inputs": [{"name": n, "datatype": d, "shape": [len(v)], "data": v} for n, d, v in inputs]}
    ).encode()


#: (id, method, path, body, headers). Paths use {model}; each goes to both processes.
CORPUS: list[tuple[str, str, str, bytes, dict[str, str]]] = [
    ("malformed-json", "POST", "/v1/models/{model}:predict", b'{"instances": [', JSON),
    ("not-an-object", "POST", "/v1/models/{model}:predict", b"[1, 2, 3]", JSON),
    ("json-string", "POST", "/v1/models/{model}:predict", b'"instances"', JSON),
    ("json-null", "POST", "/v1/models/{model}:predict", b"null", JSON),
    ("empty-body", "POST", "/v1/models/{model}:predict", b"", JSON),
    ("instances-not-list", "POST", "/v1/models/{model}:predict", b'{"instances": {"a": 1}}', JSON),
    ("empty-batch", "POST", "/v1/models/{model}:predict", _v1(), JSON),
    ("oversize-batch", "POST", "/v1/models/{model}:predict", _v1(*[_tx()] * 1000), JSON),
    ("missing-field", "POST", "/v1/models/{model}:predict", _v1(_tx(amount=...)), JSON),
    ("extra-field", "POST", "/v1/models/{model}:predict", _v1(_tx(card_number="4111111111111111")), JSON),
    ("extra-top-level", "POST", "/v1/models/{model}:predict", b'{"instances": [], "debug": true}', JSON),
    ("wrong-type-id", "POST", "/v1/models/{model}:predict", _v1(_tx(customer_id="1")), JSON),
    ("bool-amount", "POST", "/v1/models/{model}:predict", _v1(_tx(amount=True)), JSON),
    (
        "nan-amount",
        "POST",
        "/v1/models/{model}:predict",
        b'{"instances": [{"customer_id": 1, "merchant_id": 2, "amount": NaN, "timestamp": 1770682200}]}',
        JSON,
    ),  # fmt: skip
    (
        "inf-timestamp",
        "POST",
        "/v1/models/{model}:predict",
        b'{"instances": [{"customer_id": 1, "merchant_id": 2, "amount": 1, "timestamp": Infinity}]}',
        JSON,
    ),  # fmt: skip
    ("huge-int-id", "POST", "/v1/models/{model}:predict", _v1(_tx(customer_id=10**40)), JSON),
    (
        "huge-float",
        "POST",
        "/v1/models/{model}:predict",
        b'{"instances": [{"customer_id": 1, "merchant_id": 2, "amount": 1e999, "timestamp": 1770682200}]}',
        JSON,
    ),  # fmt: skip
    ("negative-amount", "POST", "/v1/models/{model}:predict", _v1(_tx(amount=-5)), JSON),
    ("naive-timestamp", "POST", "/v1/models/{model}:predict", _v1(_tx(timestamp="2026-02-10T00:10:00")), JSON),
    ("absurd-offset", "POST", "/v1/models/{model}:predict", _v1(_tx(timestamp="2026-01-01T00:00:00+99:00")), JSON),
    ("year-9999", "POST", "/v1/models/{model}:predict", _v1(_tx(timestamp="9999-12-31T23:59:59+00:00")), JSON),
    ("year-1", "POST", "/v1/models/{model}:predict", _v1(_tx(timestamp="0001-01-01T00:00:00-01:00")), JSON),
    ("bad-txn-id", "POST", "/v1/models/{model}:predict", _v1(_tx(transaction_id="a b/../" * 40)), JSON),
    ("rows-for-transformer", "POST", "/v1/models/{model}:predict", b'{"instances": [[1, 2, 3]]}', JSON),
    ("ragged-rows", "POST", "/v1/models/{model}:predict", b'{"instances": [[1, 2], [1]]}', JSON),
    ("nested-deep", "POST", "/v1/models/{model}:predict", b"[" * 50_000 + b"]" * 50_000, JSON),
    ("invalid-utf8", "POST", "/v1/models/{model}:predict", b'{"instances": ["\xff\xfe\xfa"]}', JSON),
    ("utf16-bom", "POST", "/v1/models/{model}:predict", '{"instances": []}'.encode("utf-16"), JSON),
    ("text-plain", "POST", "/v1/models/{model}:predict", _v1(_tx()), {"content-type": "text/plain"}),
    ("octet-stream", "POST", "/v1/models/{model}:predict", _v1(_tx()), {"content-type": "application/octet-stream"}),
    ("form", "POST", "/v1/models/{model}:predict", b"a=1&b=2", {"content-type": "application/x-www-form-urlencoded"}),
    ("multipart", "POST", "/v1/models/{model}:predict", b"--x\r\n\r\n--x--", {"content-type": "multipart/form-data"}),
    ("gzip-claimed", "POST", "/v1/models/{model}:predict", _v1(_tx()), {**JSON, "content-encoding": "gzip"}),
    ("ten-mb", "POST", "/v1/models/{model}:predict", b" " * TEN_MB, JSON),
    ("ten-mb-v2", "POST", "/v2/models/{model}/infer", b"{" + b" " * TEN_MB, JSON),
    ("get-predict", "GET", "/v1/models/{model}:predict", b"", {}),
    ("put-predict", "PUT", "/v1/models/{model}:predict", b"{}", JSON),
    ("unknown-model", "POST", "/v1/models/nope:predict", _v1(_tx()), JSON),
    ("unknown-route", "GET", "/v3/whatever", b"", {}),
    ("explain", "POST", "/v1/models/{model}:explain", _v1(_tx()), JSON),
    ("v2-list-body", "POST", "/v2/models/{model}/infer", b"[]", JSON),
    ("v2-inputs-not-list", "POST", "/v2/models/{model}/infer", b'{"inputs": 5}', JSON),
    ("v2-inputs-scalars", "POST", "/v2/models/{model}/infer", b'{"inputs": [5]}', JSON),
    ("v2-empty-inputs", "POST", "/v2/models/{model}/infer", b'{"inputs": []}', JSON),
    (
        "v2-shape-mismatch",
        "POST",
        "/v2/models/{model}/infer",
        b'{"inputs": [{"name": "customer_id", "shape": [2], "datatype": "INT64", "data": [1]}]}',
        JSON,
    ),  # fmt: skip
    (
        "v2-bad-datatype",
        "POST",
        "/v2/models/{model}/infer",
        b'{"inputs": [{"name": "features", "shape": [1], "datatype": "FOO", "data": [1]}]}',
        JSON,
    ),  # fmt: skip
    (
        "v2-int8-overflow",
        "POST",
        "/v2/models/{model}/infer",
        b'{"inputs": [{"name": "features", "shape": [1, %d], "datatype": "INT8", "data": [1000' % N_FEATURES
        + b", 1" * (N_FEATURES - 1)
        + b"]}]}",
        JSON,
    ),  # fmt: skip
    (
        "v2-data-string",
        "POST",
        "/v2/models/{model}/infer",
        b'{"inputs": [{"name": "features", "shape": [1, %d], "datatype": "FP32", "data": "abc"}]}' % N_FEATURES,
        JSON,
    ),  # fmt: skip
    (
        "v2-nan",
        "POST",
        "/v2/models/{model}/infer",
        b'{"inputs": [{"name": "features", "shape": [1, %d], "datatype": "FP32", "data": [NaN' % N_FEATURES
        + b", 1" * (N_FEATURES - 1)
        + b"]}]}",
        JSON,
    ),  # fmt: skip
    ("v2-columns-missing", "POST", "/v2/models/{model}/infer", _v2(("customer_id", "INT64", [1])), JSON),
    (
        "v2-columns-ragged",
        "POST",
        "/v2/models/{model}/infer",
        _v2(
            ("customer_id", "INT64", [1, 2]),
            ("merchant_id", "INT64", [1]),
            ("amount", "FP64", [1.0]),
            ("timestamp", "FP64", [1770682200.0]),
        ),
        JSON,
    ),  # fmt: skip
    (
        "v2-header-length-text",
        "POST",
        "/v2/models/{model}/infer",
        b'{"inputs": []}',
        {"inference-header-content-length": "abc"},
    ),  # fmt: skip
    (
        "v2-header-length-huge",
        "POST",
        "/v2/models/{model}/infer",
        b'{"inputs": []}',
        {"inference-header-content-length": "99999"},
    ),  # fmt: skip
    ("v2-versioned-metadata", "GET", "/v2/models/{model}/versions/1", b"", {}),
    ("v2-versioned-ready", "GET", "/v2/models/{model}/versions/1/ready", b"", {}),
    ("v2-versioned-infer", "POST", "/v2/models/{model}/versions/1/infer", b'{"inputs": []}', JSON),
    ("v2-unknown-model-ready", "GET", "/v2/models/nope/ready", b"", {}),
    ("v2-unknown-model-metadata", "GET", "/v2/models/nope", b"", {}),
]


def run_corpus(endpoints: Iterable[Endpoint], tally: Tally) -> None:
    """Send every corpus case to every endpoint, then a valid request."""
    with httpx.Client(timeout=30) as client:
        for endpoint in endpoints:
            for _, method, path, body, headers in CORPUS:
                tally.add(f"corpus:{endpoint.name}", endpoint.send(client, method, path, body, headers))
            endpoint.still_answers(client)


# ---------------------------------------------------------------- generated cases (hypothesis)
FIELDS = ("customer_id", "merchant_id", "amount", "timestamp", "transaction_id")
_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)
_json_values = st.recursive(
    _json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip
_numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1e-320, 1e308, 2**63, 2**63 - 1, 946_684_800, 4_102_444_801]),
)
_timestamps = st.one_of(
    _numbers,
    st.datetimes(timezones=st.none() | st.timezones()).map(lambda d: d.isoformat()),
    st.text(max_size=30),
)


@st.composite
def transactions(draw: st.DrawFn) -> dict[str, Any]:
    """A transaction, mostly plausible, with one or more fields broken, dropped or added."""
    tx: dict[str, Any] = {
        "customer_id": draw(st.integers(0, 10**6) | _numbers | _json_values),
        "merchant_id": draw(st.integers(0, 10**6) | _numbers | _json_values),
        "amount": draw(st.floats(0.01, 5000) | _numbers | _json_values),
        "timestamp": draw(st.just(1_770_682_200) | _timestamps | _json_values),
    }
    if draw(st.booleans()):
        tx["transaction_id"] = draw(st.from_regex(r"[A-Za-z0-9._:-]{1,20}", fullmatch=True) | _json_values)
    for name in draw(st.sets(st.sampled_from(FIELDS), max_size=2)):
        tx.pop(name, None)
    if draw(st.integers(0, 9)) == 0:
        tx[draw(st.text(max_size=12))] = draw(_json_values)
    return tx


def _dumps(payload: Any) -> bytes:
    """JSON with NaN/Infinity tokens where the payload has them (what a sloppy client sends)."""
    return json.dumps(payload, allow_nan=True).encode("utf-8", errors="surrogatepass")


@st.composite
def v1_requests(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    """Transformer v1 bodies: batches of broken transactions, batch sizes 0..300, odd top levels."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        payload: Any = draw(_json_values)
    elif kind == 1:
        payload = {"instances": [draw(transactions())] * draw(st.sampled_from([0, 255, 256, 257, 300]))}
    else:
        payload = {"instances": draw(st.lists(transactions(), max_size=5))}
        if draw(st.integers(0, 9)) == 0:
            payload[draw(st.text(max_size=10))] = draw(_json_values)
    return _dumps(payload), {"content-type": draw(st.sampled_from(CONTENT_TYPES[:2]))}


_datatypes = st.sampled_from(["BOOL", "INT8", "INT32", "INT64", "UINT8", "FP16", "FP32", "FP64", "BYTES", "FOO", ""])


@st.composite
def v2_inputs(draw: st.DrawFn, names: list[str]) -> dict[str, Any]:
    n = draw(st.integers(0, 4))
    data = draw(st.lists(_json_values | _numbers, min_size=n, max_size=n) | _json_values)
    tensor: dict[str, Any] = {
        "name": draw(st.sampled_from(names) | st.text(max_size=10)),
        "datatype": draw(_datatypes),
        "shape": draw(st.just([n]) | st.lists(st.integers(-2, 2**40), max_size=3)),
        "data": data,
    }
    for key in draw(st.sets(st.sampled_from(["name", "datatype", "shape", "data"]), max_size=1)):
        tensor.pop(key)
    return tensor


@st.composite
def v2_requests(draw: st.DrawFn, names: list[str]) -> tuple[bytes, dict[str, str]]:
    """v2 bodies with inputs named like the real ones (transaction columns, `features`) and broken otherwise."""
    payload: Any = {"inputs": draw(st.lists(v2_inputs(names), max_size=5))}
    if draw(st.integers(0, 9)) == 0:
        payload = draw(_json_values)
    headers = {"content-type": draw(st.sampled_from(CONTENT_TYPES[:2]))}
    if draw(st.integers(0, 19)) == 0:
        headers["inference-header-content-length"] = str(draw(st.integers(0, 100)))
    return _dumps(payload), headers


@st.composite
def predictor_v1_requests(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    """Predictor v1 rows: wrong widths, NaN/Inf, huge numbers, batch sizes 0..300."""
    width = draw(st.sampled_from([0, 1, N_FEATURES - 1, N_FEATURES, N_FEATURES + 1]))
    row = draw(st.lists(_numbers | _json_values, min_size=width, max_size=width))
    rows = [row] * draw(st.sampled_from([0, 1, 2, 256, 257]))
    payload: Any = {"instances": rows} if draw(st.integers(0, 9)) else draw(_json_values)
    return _dumps(payload), JSON


@st.composite
def raw_requests(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    """Arbitrary bytes (often invalid UTF-8) under arbitrary content types."""
    return draw(st.binary(max_size=200)), {"content-type": draw(st.sampled_from(CONTENT_TYPES))}


def run_generated(
    name: str,
    strategy: st.SearchStrategy[Any],
    send: Callable[[Any], int],
    n: int,
    tally: Tally,
    seed_value: int = 0,
) -> None:
    """Draw up to `n` examples of `strategy` (generation only, no shrinking: a failure reports its case) and
    send each; a ContractViolation propagates with the falsifying example."""

    @settings(
        max_examples=n,
        database=None,
        deadline=None,
        derandomize=False,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @seed(seed_value)
    @given(strategy)
    def run(case: Any) -> None:
        tally.add(name, send(case))

    run()


def schemathesis_cases(model: str, mode: str) -> st.SearchStrategy[tuple[str, str, Any]]:
    """(method, path, body) cases from the Open Inference Protocol spec (rest_predict_v2.yaml).

    The spec writes every route with `/versions/${MODEL_VERSION}`; one endpoint serves one version, so
    the version segment is dropped for half of the cases (the routes that answer) and kept for the rest
    (answered 404).
    """
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis.core import NotSet

    schema = schemathesis.openapi.from_path(str(SPEC))
    generation = GenerationMode.POSITIVE if mode == "positive" else GenerationMode.NEGATIVE
    strategies = []
    for result in schema.get_all_operations():
        operation = result.ok()
        params = {"MODEL_NAME": model, "MODEL_VERSION": "1"}
        strategies.append(operation.as_strategy(generation, path_parameters=params))

    def to_request(case: Any, versioned: bool) -> tuple[str, str, Any]:
        path = case.formatted_path.replace("$", "")
        if not versioned:
            path = path.replace("/versions/1", "")
        body = None if case.method.upper() != "POST" or isinstance(case.body, NotSet) else case.body
        return case.method.upper(), path, body

    return st.builds(to_request, st.one_of(strategies), st.booleans())


def send_json(endpoint: Endpoint, client: httpx.Client) -> Callable[[tuple[str, str, Any]], int]:
    """A sender of (method, path, JSON-able body) cases to `endpoint`."""

    def send(case: tuple[str, str, Any]) -> int:
        method, path, body = case
        if body is None:
            return endpoint.send(client, method, path, b"", {})
        content = body if isinstance(body, bytes) else _dumps(body)
        return endpoint.send(client, method, path, content, JSON)

    return send


def send_body(endpoint: Endpoint, client: httpx.Client, path: str) -> Callable[[tuple[bytes, dict[str, str]]], int]:
    """A sender of (body, headers) cases to one POST route of `endpoint`."""

    def send(case: tuple[bytes, dict[str, str]]) -> int:
        body, headers = case
        return endpoint.send(client, "POST", path, body, headers)

    return send
