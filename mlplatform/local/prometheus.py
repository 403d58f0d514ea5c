"""Real local Prometheus and Alertmanager servers (Debian packages) for local runs and tests."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml

from mlplatform.errors import MlPlatformError
from mlplatform.http import LOOPBACK, local_address
from mlplatform.local.serving import free_port
from mlplatform.monitoring.prometheus import query

#: Executables of the Debian packages `prometheus` and `prometheus-alertmanager` (scripts/services.sh installs them).
PROMETHEUS_BIN = "prometheus"
ALERTMANAGER_BIN = "prometheus-alertmanager"
#: The one scrape config: file_sd over targets/*.json; each file is one job and carries its name as the `job` label
#: (a target label set by service discovery wins over the scrape config's job_name).
SCRAPE_CONFIG_NAME = "mlplatform-local"
_LOG_TAIL_CHARS = 3000
_JOB_FILE_RE = re.compile(r"[^A-Za-z0-9_.-]")


class LocalServerError(MlPlatformError):
    """A local Prometheus or Alertmanager process failed to start, reload or answer."""


class PrometheusStartError(LocalServerError):
    """Prometheus exited or was not ready in time; the message carries the tail of its log."""


class AlertmanagerStartError(LocalServerError):
    """Alertmanager exited or was not ready in time; the message carries the tail of its log."""


class ScrapeTimeout(LocalServerError):
    """The targets of a job were not all scraped successfully (up == 1) in time."""


def _duration(seconds: float) -> str:
    """A Prometheus duration string (whole milliseconds)."""
    millis = round(seconds * 1000)
    if millis <= 0:
        raise ValueError(f"durations must be positive, got {seconds} s")
    return f"{millis}ms"


def _free_port() -> int:

    return free_port()


def _log_tail(path: Path) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return text[-_LOG_TAIL_CHARS:]


class _LocalProcess:
    """A server process on `host` (loopback unless told otherwise) whose readiness is `GET /-/ready` == 200."""

    _error: type[LocalServerError] = LocalServerError
    _name = "server"

    def __init__(self, work_dir: Path, port: int, host: str = LOOPBACK) -> None:
        self.work_dir = Path(work_dir)
        self.host = host
        self._requested_port = port
        self.port = port
        self._process: subprocess.Popen[bytes] | None = None
        self.log_path = self.work_dir / f"{self._name}.log"

    @property
    def url(self) -> str:
        """Root URL of the HTTP API, e.g. http://127.0.0.1:9090."""
        return f"http://{local_address(self.host)}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _write_config(self) -> None:
        raise NotImplementedError

    def start(self, timeout_seconds: float = 60.0) -> None:
        """Write the configuration, start the process and wait until it answers /-/ready.

        Raises:
            LocalServerError: (the subclass's start error) the process exited or was not ready in time.
        """
        if self.running:
            return
        self.work_dir.mkdir(parents=True, exist_ok=True)
        attempts = 3 if self._requested_port == 0 else 1  # a free port can be taken between the probe and the bind
        for attempt in range(attempts):
            self.port = self._requested_port or _free_port()
            self._write_config()
            log = self.log_path.open("ab")
            try:
                self._process = subprocess.Popen(
                    self._command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.work_dir, start_new_session=True
                )
            except FileNotFoundError as exc:
                raise self._error(
                    f"{self._command()[0]} is not installed; install it with `make services` (scripts/services.sh up)"
                ) from exc
            finally:
                log.close()
            try:
                self._wait_ready(timeout_seconds)
                return
            except self._error:
                self.stop()
                if attempt + 1 < attempts and "address already in use" in _log_tail(self.log_path):
                    continue
                raise

    def _wait_ready(self, timeout_seconds: float) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout_seconds
        with httpx.Client(timeout=2.0) as http:
            while True:
                code = self._process.poll()
                if code is not None:
                    raise self._error(
                        f"{self._name} exited with code {code} during start; log {self.log_path}:\n"
                        f"{_log_tail(self.log_path)}"
                    )
                try:
                    if http.get(self.url + "/-/ready").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise self._error(
                        f"{self._name} on {self.url} was not ready within {timeout_seconds:g} s; "
                        f"log {self.log_path}:\n{_log_tail(self.log_path)}"
                    )
                time.sleep(0.1)  # polling interval of the readiness probe

    def reload(self, timeout_seconds: float = 10.0) -> None:
        """Rewrite the configuration and make the process re-read it (`POST /-/reload`).

        Raises:
            LocalServerError: The server is not running or rejected the new configuration.
        """
        if not self.running:
            raise LocalServerError(f"{self._name} is not running; call start() first")
        self._write_config()
        try:
            response = httpx.post(self.url + "/-/reload", timeout=timeout_seconds)
        except httpx.HTTPError as exc:
            raise LocalServerError(f"{self._name} on {self.url} did not answer the reload: {exc}") from exc
        if response.status_code != 200:
            raise LocalServerError(
                f"{self._name} rejected the reload (HTTP {response.status_code}): {response.text.strip()[:500]}"
            )

    def stop(self, timeout_seconds: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout_seconds`; returns the exit code (None when never started)."""
        proc = self._process
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_seconds)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._process = None
        return proc.returncode

    def __enter__(self) -> _LocalProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _get_json(self, path: str, params: Mapping[str, str] | None = None, timeout_seconds: float = 10.0) -> Any:
        try:
            response = httpx.get(self.url + path, params=params, timeout=timeout_seconds)
        except httpx.HTTPError as exc:
            raise LocalServerError(f"{self._name} on {self.url} did not answer GET {path}: {exc}") from exc
        if response.status_code != 200:
            raise LocalServerError(f"GET {self.url}{path} answered HTTP {response.status_code}: {response.text[:300]}")
        return response.json()


def _job_file_name(job: str) -> str:
    if not job:
        raise ValueError("a job name must not be empty")
    return _JOB_FILE_RE.sub("_", job) + ".json"


class LocalPrometheus(_LocalProcess):
    """A real Prometheus server (on 127.0.0.1 unless `host` says otherwise) whose scrape targets are files under
    `<work_dir>/targets/`.

    One scrape config discovers every `targets/*.json` file (file_sd, watched with inotify), so jobs can be added,
    changed and removed while the server runs; each file is one job and carries the job name as the `job` label.

    Args:
        work_dir: Holds prometheus.yml, targets/, the TSDB (data/) and prometheus.log.
        port: HTTP port; 0 picks a free one.
        scrape_interval_seconds: Scrape interval (also the scrape timeout).
        evaluation_interval_seconds: Rule evaluation interval.
        rule_files: Prometheus rule files to load (changes need `reload()`).
        alertmanager_url: Where firing alerts go, e.g. http://127.0.0.1:9093; None sends them nowhere.
        retention: TSDB retention (a Prometheus duration).
        host: Address to listen on.

    Example:
        >>> with LocalPrometheus(tmp_path) as prom:  # doctest: +SKIP
        ...     prom.set_targets("serving", ["127.0.0.1:8080"])
        ...     prom.wait_scraped("serving", timeout_seconds=30)
    """

    _error = PrometheusStartError
    _name = "prometheus"

    def __init__(
        self,
        work_dir: Path,
        port: int = 0,
        scrape_interval_seconds: float = 1.0,
        evaluation_interval_seconds: float = 1.0,
        rule_files: Sequence[Path] = (),
        alertmanager_url: str | None = None,
        retention: str = "1d",
        host: str = LOOPBACK,
    ) -> None:
        super().__init__(work_dir, port, host)
        self.scrape_interval_seconds = scrape_interval_seconds
        self.evaluation_interval_seconds = evaluation_interval_seconds
        self.rule_files = [Path(p).resolve() for p in rule_files]
        self.alertmanager_url = alertmanager_url
        self.retention = retention
        self.config_path = self.work_dir / "prometheus.yml"
        self.targets_dir = self.work_dir / "targets"
        self.data_dir = self.work_dir / "data"
        self._targets: dict[str, list[str]] = {}

    def config(self) -> dict[str, Any]:
        """The prometheus.yml content."""
        interval = _duration(self.scrape_interval_seconds)
        cfg: dict[str, Any] = {
            "global": {
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "evaluation_interval": _duration(self.evaluation_interval_seconds),
            },
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [
                {
                    "job_name": SCRAPE_CONFIG_NAME,
                    "file_sd_configs": [{"files": [str(self.targets_dir / "*.json")], "refresh_interval": "1m"}],
                }
            ],
        }
        if self.alertmanager_url:
            parts = urlsplit(self.alertmanager_url)
            if not parts.scheme or not parts.netloc:
                raise ValueError(f"alertmanager_url must be an absolute URL like http://host:9093, got {parts!r}")
            cfg["alerting"] = {
                "alertmanagers": [
                    {
                        "scheme": parts.scheme,
                        "path_prefix": parts.path or "/",
                        "timeout": "5s",
                        "api_version": "v2",
                        "static_configs": [{"targets": [parts.netloc]}],
                    }
                ]
            }
        return cfg

    def _write_config(self) -> None:
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.config_path, yaml.safe_dump(self.config(), sort_keys=False))

    def _command(self) -> list[str]:
        return [
            PROMETHEUS_BIN,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.data_dir}",
            f"--storage.tsdb.retention.time={self.retention}",
            f"--web.listen-address={self.host}:{self.port}",
            "--web.enable-lifecycle",
            "--log.level=info",
        ]

    def set_targets(self, job: str, targets: Sequence[str], labels: Mapping[str, str] | None = None) -> None:
        """Point job `job` at `targets` (host:port, scraped at /metrics); an empty list removes the job.

        The job's file is replaced atomically; Prometheus picks the change up through inotify.
        """
        extra = dict(labels or {})
        if "job" in extra:
            raise ValueError("the job label is the `job` argument; do not pass it in `labels`")
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        path = self.targets_dir / _job_file_name(job)
        if not targets:
            path.unlink(missing_ok=True)
            self._targets.pop(job, None)
            return
        groups = [{"targets": list(targets), "labels": {"job": job, **extra}}]
        _atomic_write(path, json.dumps(groups, indent=2))
        self._targets[job] = list(targets)

    def active_targets(self) -> list[dict[str, Any]]:
        """The active targets as `GET /api/v1/targets` reports them."""
        body = self._get_json("/api/v1/targets", {"state": "active"})
        return list(body["data"]["activeTargets"])

    def query(self, promql: str, at: float | None = None) -> list[Any]:
        """An instant query now (or at `at`); the samples (mlplatform.monitoring.prometheus.Sample)."""

        return query(self.url, promql, time.time() if at is None else at)

    def alerts(self) -> list[dict[str, Any]]:
        """Alerts that are pending or firing now (`GET /api/v1/alerts`)."""
        return list(self._get_json("/api/v1/alerts")["data"]["alerts"])

    def rule_groups(self) -> list[dict[str, Any]]:
        """The loaded rule groups with their health (`GET /api/v1/rules`)."""
        return list(self._get_json("/api/v1/rules")["data"]["groups"])

    def wait_scraped(self, job: str, timeout_seconds: float = 30.0) -> list[dict[str, Any]]:
        """Wait until every target of `job` set with `set_targets` has been scraped successfully (up == 1).

        Returns:
            The job's active targets.

        Raises:
            ScrapeTimeout: Not every target was up in time; the message says which ones and their last error.
            LocalServerError: `job` has no targets.
        """
        expected = set(self._targets.get(job, []))
        if not expected:
            raise LocalServerError(f"job {job!r} has no targets; call set_targets() first")
        selector = 'up{job="' + job.replace("\\", "\\\\").replace('"', '\\"') + '"}'
        deadline = time.monotonic() + timeout_seconds
        ours: list[dict[str, Any]] = []
        while True:
            ours = [t for t in self.active_targets() if t["labels"].get("job") == job]
            seen = {t["discoveredLabels"].get("__address__") for t in ours}
            if seen == expected and all(t["health"] == "up" for t in ours):
                up = self.query(selector)
                if len(up) == len(expected) and all(s.value == 1 for s in up):
                    return ours
            if time.monotonic() > deadline:
                states = {t["discoveredLabels"].get("__address__"): (t["health"], t["lastError"]) for t in ours}
                missing = sorted(expected - seen)
                raise ScrapeTimeout(
                    f"job {job!r} not fully scraped within {timeout_seconds:g} s: targets {states}, "
                    f"not discovered yet {missing}; check that each target serves /metrics"
                )
            time.sleep(min(self.scrape_interval_seconds, 0.25))  # polling interval of the scrape check

    def __enter__(self) -> LocalPrometheus:
        self.start()
        return self


class LocalAlertmanager(_LocalProcess):
    """A real Alertmanager (on 127.0.0.1 unless `host` says otherwise) that routes every alert to webhook receivers,
    with short test timings.

    Args:
        work_dir: Holds alertmanager.yml, data/ and alertmanager.log.
        webhook_urls: Webhook receivers (Alertmanager webhook payload v4) that get every notification.
        port: HTTP port; 0 picks a free one.
        group_wait_seconds: Wait before the first notification of a new alert group.
        group_interval_seconds: Wait before notifying about changes in a group.
        repeat_interval_seconds: Wait before re-sending an unchanged firing notification.
        group_by: Labels grouping alerts into one notification.
        bearer_token: Sent as `Authorization: Bearer ...` to the receivers when set.
        host: Address to listen on.
    """

    _error = AlertmanagerStartError
    _name = "alertmanager"

    def __init__(
        self,
        work_dir: Path,
        webhook_urls: Sequence[str],
        port: int = 0,
        group_wait_seconds: float = 0.5,
        group_interval_seconds: float = 1.0,
        repeat_interval_seconds: float = 3600.0,
        group_by: Sequence[str] = ("alertname", "model_name"),
        bearer_token: str | None = None,
        host: str = LOOPBACK,
    ) -> None:
        super().__init__(work_dir, port, host)
        if not webhook_urls:
            raise ValueError("at least one webhook URL is needed")
        self.webhook_urls = list(webhook_urls)
        self.group_wait_seconds = group_wait_seconds
        self.group_interval_seconds = group_interval_seconds
        self.repeat_interval_seconds = repeat_interval_seconds
        self.group_by = list(group_by)
        self.bearer_token = bearer_token
        self.config_path = self.work_dir / "alertmanager.yml"
        self.data_dir = self.work_dir / "data"

    def config(self) -> dict[str, Any]:
        """The alertmanager.yml content."""
        webhook: dict[str, Any] = {"send_resolved": True}
        if self.bearer_token:
            webhook["http_config"] = {"authorization": {"type": "Bearer", "credentials": self.bearer_token}}
        return {
            "route": {
                "receiver": "mlplatform-webhook",
                "group_by": self.group_by,
                "group_wait": _duration(self.group_wait_seconds),
                "group_interval": _duration(self.group_interval_seconds),
                "repeat_interval": _duration(self.repeat_interval_seconds),
            },
            "receivers": [
                {"name": "mlplatform-webhook", "webhook_configs": [{**webhook, "url": u} for u in self.webhook_urls]}
            ],
        }

    def _write_config(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(self.config_path, yaml.safe_dump(self.config(), sort_keys=False))

    def _command(self) -> list[str]:
        return [
            ALERTMANAGER_BIN,
            f"--config.file={self.config_path}",
            f"--storage.path={self.data_dir}",
            f"--web.listen-address={self.host}:{self.port}",
            "--cluster.listen-address=",  # no HA gossip: one instance, no second port
            "--log.level=info",
        ]

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts Alertmanager holds (`GET /api/v2/alerts`)."""
        return list(self._get_json("/api/v2/alerts"))

    def __enter__(self) -> LocalAlertmanager:
        self.start()
        return self


def _atomic_write(path: Path, text: str) -> None:
    """Replace `path` atomically; the temporary name does not match `*.json`/`*.yml` globs."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _seconds(duration: str) -> float:
    """Seconds of a Prometheus duration such as 1h30m, 5m, 250ms."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"not a Prometheus duration: {duration!r}")
    return sum(int(n) * units[u] for n, u in parts)


def shortened_rules(source: Path, target: Path, max_for_seconds: float) -> Path:
    """Copy a rules file with every alert's `for` capped at `max_for_seconds`, for local runs that cannot wait.

    Expressions, labels and annotations stay as they are: the same rules, only faster to fire.
    """
    doc = yaml.safe_load(Path(source).read_text())
    for group in doc.get("groups", []):
        for rule in group.get("rules", []):
            if "for" in rule and _seconds(str(rule["for"])) > max_for_seconds:
                rule["for"] = _duration(max_for_seconds)
    target.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(target, yaml.safe_dump(doc, sort_keys=False))
    return target
