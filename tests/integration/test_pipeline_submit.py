"""`mlplatform pipeline submit` against a STAND-IN for the Kubeflow Pipelines API.

No KFP backend (API server, Argo, MySQL, object store on Kubernetes) can run here, so a small
HTTP server imitates the few KFP v2beta1 REST endpoints that the real `kfp.Client` calls when it
submits a compiled pipeline package: GET healthz, GET experiments (look-up by name), POST
experiments, POST runs. It records the requests, so the test checks what the real client sends
(the compiled pipeline spec and the runtime parameters), not just what the CLI prints.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from typer.testing import CliRunner

from mlplatform.cli import app

pytestmark = pytest.mark.integration

API = "/apis/v2beta1"


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any


@dataclass
class FakeKfp:
    url: str
    requests: list[Recorded] = field(default_factory=list)
    experiments: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def posted(self, path: str) -> list[Any]:
        return [r.body for r in self.requests if r.method == "POST" and r.path == path]


def _handler(state: FakeKfp) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep pytest output clean
            pass

        def _reply(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _record(self) -> Recorded:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            rec = Recorded(self.command, parts.path, parse_qs(parts.query), body)
            state.requests.append(rec)
            return rec

        def do_GET(self) -> None:
            rec = self._record()
            if rec.path == f"{API}/healthz":
                self._reply(200, {"commit_sha": "stand-in", "tag_name": "2.5.0", "multi_user": False})
            elif rec.path == f"{API}/experiments":
                # kfp looks an experiment up by a JSON filter on display_name.
                wanted = None
                for f in rec.query.get("filter", []):
                    for p in json.loads(f).get("predicates", []):
                        if p.get("key") == "display_name":
                            wanted = p.get("string_value", p.get("stringValue"))
                found = [e for e in state.experiments.values() if wanted is None or e["display_name"] == wanted]
                self._reply(200, {"experiments": found, "total_size": len(found)} if found else {})
            elif m := re.fullmatch(rf"{API}/experiments/([^/]+)", rec.path):
                exp = state.experiments.get(m.group(1))
                self._reply(200, exp) if exp else self._reply(404, {"error": "not found", "code": 5})
            elif m := re.fullmatch(rf"{API}/runs/([^/]+)", rec.path):
                run = state.runs.get(m.group(1))
                self._reply(200, run) if run else self._reply(404, {"error": "not found", "code": 5})
            else:
                self._reply(404, {"error": f"stand-in has no GET {rec.path}", "code": 5})

        def do_POST(self) -> None:
            rec = self._record()
            body = rec.body or {}
            if rec.path == f"{API}/experiments":
                exp = {
                    "experiment_id": str(uuid.uuid4()),
                    "display_name": body.get("display_name"),
                    "description": body.get("description"),
                    "created_at": "2026-01-01T00:00:00Z",
                    "storage_state": "AVAILABLE",
                }
                state.experiments[exp["experiment_id"]] = exp
                self._reply(200, exp)
            elif rec.path == f"{API}/runs":
                if body.get("experiment_id") not in state.experiments:
                    self._reply(400, {"error": "unknown experiment_id", "code": 3})
                    return
                run = {
                    **body,
                    "run_id": str(uuid.uuid4()),
                    "state": "PENDING",
                    "storage_state": "AVAILABLE",
                    "created_at": "2026-01-01T00:00:00Z",
                }
                state.runs[run["run_id"]] = run
                self._reply(200, run)
            else:
                self._reply(404, {"error": f"stand-in has no POST {rec.path}", "code": 5})

    return Handler


@pytest.fixture
def fake_kfp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeKfp]:
    """The stand-in KFP API on a free port of 127.0.0.1, served from a thread."""
    import kfp

    # No user context file (~/.config/kfp/context.json) may change what the client does.
    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "no-kfp-context.json"))
    for var in (
        "KF_PIPELINES_ENDPOINT",
        "KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME",
        "KF_PIPELINES_DEFAULT_EXPERIMENT_NAME",
    ):
        monkeypatch.delenv(var, raising=False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)  # handler replaced below
    state = FakeKfp(url=f"http://127.0.0.1:{server.server_address[1]}")
    server.RequestHandlerClass = _handler(state)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _invoke(*args: str):
    return CliRunner().invoke(app, ["pipeline", "submit", *args])


def _printed_json(text: str) -> dict[str, Any]:
    """The JSON object the command prints last.

    The CLI prints it through rich, which wraps lines at the console width (80 columns when not a
    terminal), so the object may span several lines: join them (whitespace between JSON tokens is
    insignificant).
    """
    lines = text.strip().splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].lstrip().startswith("{"):
            return json.loads("".join(lines[i:]))
    raise AssertionError(f"no JSON object in the output:\n{text}")


def test_submit_creates_experiment_and_run_with_compiled_spec(fake_kfp: FakeKfp) -> None:
    result = _invoke("--host", fake_kfp.url, "--n-transactions", "5000")
    assert result.exit_code == 0, f"{result.output}\n{result.exception!r}"

    runs = fake_kfp.posted(f"{API}/runs")
    assert len(runs) == 1, fake_kfp.requests
    (run_id,) = fake_kfp.runs
    printed = _printed_json(result.stdout)
    assert printed == {"run_id": run_id, "host": fake_kfp.url, "experiment": "fraud-detection"}

    # The experiment was looked up by name, then created, and the run filed under it.
    experiments = fake_kfp.posted(f"{API}/experiments")
    assert [e["display_name"] for e in experiments] == ["fraud-detection"]
    run = runs[0]
    assert run["experiment_id"] in fake_kfp.experiments

    # The run carries the compiled pipeline spec (inline, not a pipeline version reference)...
    spec = run["pipeline_spec"]
    # With a Kubernetes platform config the client sends {"pipeline_spec": ..., "platform_spec": ...}.
    if "platform_spec" in spec:
        assert spec["platform_spec"]["platforms"]
        spec = spec["pipeline_spec"]
    assert spec["pipelineInfo"]["name"] == "fraud-training"
    assert spec["root"]["dag"]["tasks"], "the compiled spec has no tasks"
    assert "deploymentSpec" in spec and spec["deploymentSpec"]["executors"]
    # ...and the parameters as runtime parameters, with the one given on the command line.
    params = run["runtime_config"]["parameters"]
    assert params["n_transactions"] == 5000
    assert set(params) <= set(spec["root"]["inputDefinitions"]["parameters"])


def test_submit_reuses_an_existing_experiment(fake_kfp: FakeKfp) -> None:
    for _ in range(2):
        result = _invoke("--host", fake_kfp.url, "--n-transactions", "5000", "--run-name", "nightly")
        assert result.exit_code == 0, result.output
    assert len(fake_kfp.posted(f"{API}/experiments")) == 1
    runs = fake_kfp.posted(f"{API}/runs")
    assert len(runs) == 2 and {r["display_name"] for r in runs} == {"nightly"}


def test_submit_rejects_a_host_that_is_not_a_url() -> None:
    result = _invoke("--host", "not-a-url", "--n-transactions", "5000")
    assert result.exit_code == 2
    assert "--host" in result.output


def test_submit_rejects_out_of_range_parameters(fake_kfp: FakeKfp) -> None:
    result = _invoke("--host", fake_kfp.url, "--n-transactions", "5")
    assert result.exit_code == 2
    assert "n_transactions" in result.output
    assert fake_kfp.requests == [], "nothing may be sent when the parameters are invalid"


def test_submit_to_an_unreachable_host_fails_cleanly() -> None:
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    result = _invoke("--host", f"http://127.0.0.1:{closed}", "--n-transactions", "5000")
    assert result.exit_code == 2, result.output
    assert "could not create the run" in result.output
