"""The serving benchmarks' load generator (benchmarks/loadgen, Go) against a small HTTP server in this process:
exactly which bytes and headers it sends, what it counts in open and closed loop, how it names failures, and how
it refuses a bad job.

The small server stands in for the serving endpoints only where those cannot be made to behave on demand: it
records each request's body and headers as received, sheds every request with 503 + Retry-After, or answers
later than the client's timeout. The load generator against the real transformer is in
tests/integration/test_serving.py.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.helpers import loadgen

BODIES = [b'{"instances": [1]}', b'{"instances": [2]}', b"\xff\x00 not utf-8"]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the serving processes answer
    received: list[tuple[str, bytes, str | None]] = []
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        with self.lock:
            self.received.append((self.path, body, self.headers.get("x-test")))
        if self.path == "/slow":
            time.sleep(1.0)
        status = 503 if self.path == "/shed" else 200
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # /slow: the client gave up waiting
            self.send_response(status)
            if status == 503:
                self.send_header("Retry-After", "1")
            self.send_header("content-type", "application/json")
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def server() -> Iterator[str]:
    _Handler.received = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _run(url: str, bodies: list[bytes] = BODIES, **job: Any) -> subprocess.CompletedProcess[bytes]:
    return loadgen(url, bodies, **{"seconds": 1.0, **job})


def _result(url: str, **job: Any) -> dict[str, Any]:
    done = _run(url, **job)
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)


def test_open_loop_sends_the_schedule_and_counts_only_after_warmup(server: str) -> None:
    result = _result(f"{server}/ok", mode="open", rate=100, warmup_seconds=0.5, headers={"x-test": "yes"})
    assert result["total"] == 150 and result["sent"] == 100  # 0.5 s of warm-up at 100/s are sent, not counted
    assert result["statuses"] == {"200": 100} and result["errors"] == 0
    assert len(result["latencies_ms"]) == 100 and all(v > 0 for v in result["latencies_ms"])
    assert 0.9 < result["wall"] < 2.0
    assert len(_Handler.received) == 150
    assert {body for _, body, _ in _Handler.received} == set(BODIES)  # bytes arrive exactly, in turn
    assert {header for _, _, header in _Handler.received} == {"yes"}


def test_closed_loop_counts_every_answer(server: str) -> None:
    result = _result(f"{server}/ok", mode="closed", concurrency=3, seconds=0.5)
    assert result["sent"] == result["total"] == len(result["latencies_ms"]) == len(_Handler.received) > 0
    assert result["statuses"] == {"200": result["sent"]} and result["errors"] == 0


def test_shedding_is_an_error_with_retry_after_counted(server: str) -> None:
    result = _result(f"{server}/shed", mode="open", rate=20)
    assert result["statuses"] == {"503": 20}
    assert result["errors"] == result["shed_with_retry_after"] == 20
    assert result["latencies_ms"] == []  # latency is counted for answered requests only


def test_transport_failures_are_named(server: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    refused = _result(f"http://127.0.0.1:{closed_port}/", mode="open", rate=10)
    assert refused["statuses"] == {"connection_refused": 10} and refused["errors"] == 10

    slow = _result(f"{server}/slow", mode="open", rate=5, timeout_seconds=0.2)
    assert slow["statuses"] == {"timeout": 5} and slow["errors"] == 5


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"url": ""}, "url is required"),
        ({"url": "127.0.0.1:8080/predict"}, "url must be an absolute http(s) URL"),
        ({"bodies": []}, "bodies"),
        ({"mode": "burst"}, "mode must be open or closed"),
        ({"mode": "open", "rate": 0}, "rate must be > 0"),
        ({"mode": "closed", "concurrency": 0}, "concurrency must be > 0"),
        ({"mode": "open", "rate": 1, "seconds": 0}, "seconds must be > 0"),
        ({"mode": "open", "rate": 1, "warmup_seconds": -1}, "warmup_seconds must be >= 0"),
        ({"mode": "open", "rate": 1, "rps": 5}, 'unknown field "rps"'),
    ],
)
def test_a_bad_job_is_refused_naming_what_is_wrong(change: dict[str, Any], named: str) -> None:
    job = {"url": "http://127.0.0.1:1/", **change}
    done = _run(job.pop("url"), **job)
    assert done.returncode == 2
    assert named in done.stderr.decode()
    assert done.stdout == b""
