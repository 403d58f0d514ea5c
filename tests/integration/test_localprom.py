"""LocalPrometheus against the real Prometheus server: scraping a prometheus_client HTTP server, jobs, reloads."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from mlplatform.local.prometheus import LocalPrometheus, LocalServerError, PrometheusStartError, ScrapeTimeout

pytestmark = pytest.mark.integration


@pytest.fixture
def exporter(port_finder: Callable[[], int]) -> Iterator[tuple[str, Gauge]]:
    """A tiny /metrics server (prometheus_client) with one gauge; its address host:port."""
    registry = CollectorRegistry()
    gauge = Gauge("mlplatform_test_gauge", "A gauge the test sets.", ["kind"], registry=registry)
    gauge.labels(kind="a").set(42.0)
    port = port_finder()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    yield f"127.0.0.1:{port}", gauge
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def prom(tmp_path: Path) -> Iterator[LocalPrometheus]:
    with LocalPrometheus(tmp_path / "prom") as p:
        yield p


def test_scrapes_jobs_added_and_removed_while_running(prom: LocalPrometheus, exporter: tuple[str, Gauge]) -> None:
    address, _ = exporter
    prom.set_targets("app", [address], labels={"env": "test"})
    targets = prom.wait_scraped("app", timeout_seconds=30)
    assert [t["health"] for t in targets] == ["up"]
    samples = prom.query('mlplatform_test_gauge{job="app",kind="a"}')
    assert len(samples) == 1
    assert samples[0].value == 42.0
    assert samples[0].labels["env"] == "test"
    assert samples[0].labels["instance"] == address

    prom.set_targets("second", [address])  # a job that did not exist at start
    prom.set_targets("app", [])  # and one removed
    prom.wait_scraped("second", timeout_seconds=30)
    deadline = time.monotonic() + 30
    while (jobs := {t["labels"]["job"] for t in prom.active_targets()}) != {"second"}:  # file_sd sees it via inotify
        assert time.monotonic() < deadline, f"job 'app' still active: {jobs}"
        time.sleep(0.1)


def test_wait_scraped_names_the_target_that_is_down(prom: LocalPrometheus, port_finder: Callable[[], int]) -> None:
    dead = f"127.0.0.1:{port_finder()}"  # nothing listens there
    prom.set_targets("dead", [dead])
    with pytest.raises(ScrapeTimeout, match=dead):
        prom.wait_scraped("dead", timeout_seconds=3)


def test_reload_loads_rule_files_and_rejects_broken_ones(prom: LocalPrometheus, tmp_path: Path) -> None:
    rules = tmp_path / "ok.rules.yaml"
    rules.write_text(
        "groups:\n- name: t\n  rules:\n  - alert: AlwaysFiring\n    expr: vector(1)\n    labels: {severity: info}\n"
    )
    prom.rule_files = [rules]
    prom.reload()
    groups = prom.rule_groups()
    assert [g["name"] for g in groups] == ["t"]
    broken = tmp_path / "broken.rules.yaml"
    broken.write_text("groups:\n- name: b\n  rules:\n  - alert: Broken\n    expr: rate(\n")
    prom.rule_files = [broken]
    with pytest.raises(LocalServerError, match="rejected the reload"):
        prom.reload()
    assert prom.running  # the old configuration stays in force


def test_start_failure_raises_with_the_log_tail(tmp_path: Path) -> None:
    broken = tmp_path / "broken-at-start.rules.yaml"
    broken.write_text("groups:\n- name: b\n  rules:\n  - alert: Broken\n    expr: rate(\n")
    prom = LocalPrometheus(tmp_path / "bad", rule_files=[broken])
    try:
        with pytest.raises(PrometheusStartError, match="broken-at-start"):
            prom.start(timeout_seconds=30)
        assert not prom.running
    finally:
        prom.stop()
