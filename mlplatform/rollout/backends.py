"""Where a rollout moves traffic: the InferenceService on a cluster, or the local splitter on localhost."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from mlplatform.deploy.artifact import prepare_local, storage_uri
from mlplatform.deploy.cluster import kubernetes_client, render_manifest, require_installed, serving_env
from mlplatform.deploy.inferenceservice import (
    ANNOTATION_MODEL_VERSION,
    FIELD_MANAGER,
    Unavailable,
    apply_and_wait,
    get,
    predictor_traffic,
    traffic_managers,
)
from mlplatform.local.prometheus import LocalPrometheus
from mlplatform.local.serving import start_local, start_splitter
from mlplatform.registry import RegisteredVersion
from mlplatform.rollout.analysis import ScoreReferences
from mlplatform.rollout.controller import RolloutError
from mlplatform.rollout.evidence import EvidenceSource, PrometheusEvidence, ScrapeEvidence
from mlplatform.rollout.settings import CanarySettings
from mlplatform.settings import PlatformSettings


def score_references(
    settings: PlatformSettings, stable: RegisteredVersion, canary: RegisteredVersion
) -> ScoreReferences | None:
    """The scores each version gave its own training data, from the reference statistics in its artifact
    (downloaded once into the work dir); None when either artifact has none (older artifacts)."""
    from mlplatform.training.model import load_reference_stats  # torch: seconds to import, only when used

    scores = [(load_reference_stats(prepare_local(settings, v)) or {}).get("score") for v in (canary, stable)]
    return ScoreReferences(canary=scores[0], stable=scores[1]) if all(scores) else None


#: Scrape interval of the local Prometheus server the local backend starts.
LOCAL_SCRAPE_INTERVAL_SECONDS = 1.0
LOCAL_SCRAPE_JOB = "mlplatform-serving"


class ClusterBackend:
    """Moves traffic by server-side applying the InferenceService with `spec.predictor.canaryTrafficPercent`.

    KServe (Serverless mode) routes that share to the latest predictor revision and the rest to the
    previous rolled-out one. Only the version's fields are applied (`mlplatform.deploy.inferenceservice.render`):
    the transformer, volumes and credentials stay as the chart installed them. Start: the canary
    version's storageUri with the first percentage; a step: the new percentage; promote: the field
    removed (the latest revision gets everything), with the predictor relabelled `stable`; roll back:
    the field set to 0. Each change waits, with a timeout, until the InferenceService is Ready and its
    status reports the split.

    Args:
        settings: Platform settings (namespace, model name, artifact store mapping).
        canary_settings: Rollout settings; `prometheus_url` is required (the evidence source).
        stable: The version serving now.
        canary: The version rolled out.
        api_client: A `kubernetes.client.ApiClient`; the in-cluster or kubeconfig one when None.
        poll_seconds: Time between two status reads.
    """

    name = "cluster"
    #: Serving runs on the cluster: real clients send the traffic, and decisions by hand patch the service.
    in_process = False

    def __init__(
        self,
        settings: PlatformSettings,
        canary_settings: CanarySettings,
        stable: RegisteredVersion,
        canary: RegisteredVersion,
        api_client: Any | None = None,
        poll_seconds: float = 5.0,
    ) -> None:
        if not canary_settings.prometheus_url:
            raise RolloutError(
                "a cluster rollout reads its evidence from Prometheus: set MLPLATFORM_CANARY_PROMETHEUS_URL "
                "(e.g. http://kube-prometheus-stack-prometheus.monitoring:9090)"
            )
        api_client = api_client or kubernetes_client()
        self.settings = settings
        self.canary_settings = canary_settings
        self.stable = stable
        self.canary = canary
        self.api = api_client
        self.poll_seconds = poll_seconds
        self.name_ = settings.registered_model_name
        self._evidence = PrometheusEvidence(
            canary_settings.prometheus_url,
            settings.registered_model_name,
            canary_settings.step_window_seconds,
            canary_settings.prometheus_scrape_interval_seconds,
        )

    def _apply(self, percent: int | None, role: str, what: str) -> None:
        """Apply the canary version with `percent` (None: all traffic) and wait until KServe reports it in force."""
        uri = storage_uri(self.canary.source, self.settings)
        manifest = render_manifest(self.settings, self.canary, uri, percent, role)
        timeout = self.canary_settings.ready_timeout_seconds
        apply_and_wait(manifest, self.api, self._live(), what, timeout, self.poll_seconds)

    def _live(self) -> dict[str, Any]:
        """The live InferenceService; while the API server is unavailable (restarting) it is asked again, within
        the rollout's ready timeout, so a restart mid-rollout neither stops nor half-applies it."""
        deadline = time.monotonic() + self.canary_settings.ready_timeout_seconds
        while True:
            try:
                return get(self.name_, self.settings.deploy_namespace, self.api)
            except Unavailable:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(self.poll_seconds)

    def start_canary(self, percent: int) -> None:
        live = require_installed(
            self.settings, self.api, storage_uri(self.stable.source, self.settings), self.stable.version
        )
        serving = (live.get("metadata") or {}).get("annotations", {}).get(ANNOTATION_MODEL_VERSION)
        if serving != self.stable.version:
            raise RolloutError(
                f"InferenceService {self.settings.deploy_namespace}/{self.name_} serves version {serving}, not the "
                f"stable version {self.stable.version}; deploy it first (`mlplatform deploy --target cluster`)"
            )
        prepare_local(self.settings, self.canary)  # verified before any traffic reaches it
        self.set_canary_percent(percent)

    def set_canary_percent(self, percent: int) -> None:
        self._apply(percent, "canary", f"serving {percent} % on the latest revision")

    def canary_percent(self) -> int | None:
        return predictor_traffic(self._live()).canary_percent

    def traffic_changed_by(self) -> str | None:
        """The field manager other than `mlplatform` that owns canaryTrafficPercent (who changed it by hand)."""
        others = [m for m in traffic_managers(self._live()) if m != FIELD_MANAGER]
        return ", ".join(others) or None

    def promote(self) -> None:
        # the predictor relabelled stable is a new revision: it takes all the traffic once ready
        self._apply(None, "stable", "promoted (latest revision at 100 %)")

    def rollback(self) -> None:
        self._apply(0, "canary", "rolled back (latest revision at 0 %)")

    def cleanup(self) -> None:
        """Nothing: Knative scales the revision without traffic down by itself."""

    def evidence(self) -> EvidenceSource:
        return self._evidence

    def score_references(self) -> ScoreReferences | None:
        return score_references(self.settings, self.stable, self.canary)

    def describe(self) -> dict[str, Any]:
        from dataclasses import asdict

        try:
            return {"target": "cluster", **asdict(predictor_traffic(self._live()))}
        except Exception as exc:  # noqa: BLE001 - status is informational
            return {"target": "cluster", "error": str(exc)}


class LocalBackend:
    """Moves traffic with the local splitter in front of one transformer + predictor pair per version.

    Evidence: a Prometheus server when `prometheus_url` is set; otherwise a local Prometheus server
    started here (scraping the predictors every second) when the Debian package is installed and
    `evidence` allows it; otherwise the predictors' /metrics read directly.

    Args:
        settings: Platform settings (work dir, registry, Feast stores).
        canary_settings: Rollout settings.
        stable: The version serving now.
        canary: The version rolled out.
        port: Port of the splitter (the endpoint clients call); 0 picks a free one.
        evidence: auto, prometheus (a local server, required) or scrape.
        canary_predictor_module: Predictor module of the canary (tests substitute deliberately broken ones).
    """

    name = "local"
    #: Serving lives in this process: nothing else calls the endpoint (traffic is replayed), and decisions by
    #: hand reach the controller through the control file.
    in_process = True

    def __init__(
        self,
        settings: PlatformSettings,
        canary_settings: CanarySettings,
        stable: RegisteredVersion,
        canary: RegisteredVersion,
        port: int = 0,
        evidence: str = "auto",
        canary_predictor_module: str = "serving.predictor",
    ) -> None:
        if evidence not in ("auto", "prometheus", "scrape"):
            raise RolloutError(f"evidence must be auto, prometheus or scrape, got {evidence!r}")
        self.settings = settings
        self.canary_settings = canary_settings
        self.stable = stable
        self.canary = canary
        self.port = port
        self.evidence_mode = evidence
        self.canary_predictor_module = canary_predictor_module
        self.services: dict[str, Any] = {}
        self._retired: list[Any] = []  # services out of traffic, stopped by cleanup()
        self.splitter: Any | None = None
        self.prometheus: Any | None = None
        self._evidence: EvidenceSource | None = None
        self.log_dir = settings.resolved_work_dir / "logs" / "rollout"

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def _serve(self, version: RegisteredVersion, role: str, predictor_module: str = "serving.predictor") -> Any:

        return start_local(
            prepare_local(self.settings, version),
            model_name=self.settings.registered_model_name,
            env=serving_env(self.settings, version.version, role),
            log_dir=self.log_dir / f"v{version.version}-{role}",
            predictor_module=predictor_module,
        )

    def open(self) -> LocalBackend:
        """Serve the stable version behind the splitter (the endpoint is `predict_url`)."""

        try:
            self.services["stable"] = self._serve(self.stable, "stable")
            self.splitter = start_splitter(
                self.settings.registered_model_name,
                self.services["stable"].url,
                self.stable.version,
                log_dir=self.log_dir,
                port=self.port,
                sticky_header=self.canary_settings.sticky_header,
            )
            self._start_evidence()
        except BaseException:
            self.close()
            raise
        return self

    def _start_evidence(self) -> None:
        model = self.settings.registered_model_name
        window, url = self.canary_settings.step_window_seconds, self.canary_settings.prometheus_url
        if url:
            self._evidence = PrometheusEvidence(
                url, model, window, self.canary_settings.prometheus_scrape_interval_seconds
            )
            return
        want_prometheus = self.evidence_mode == "prometheus" or (
            self.evidence_mode == "auto" and shutil.which("prometheus") is not None
        )
        if want_prometheus:
            import tempfile

            root = self.settings.resolved_work_dir / "prometheus"
            root.mkdir(parents=True, exist_ok=True)
            self.prometheus = LocalPrometheus(
                # a fresh TSDB per rollout: series of an earlier run's targets must not look alive
                Path(tempfile.mkdtemp(prefix="rollout-", dir=root)),
                scrape_interval_seconds=LOCAL_SCRAPE_INTERVAL_SECONDS,
            )
            self.prometheus.start()
            self._update_targets()
            self._evidence = PrometheusEvidence(self.prometheus.url, model, window, LOCAL_SCRAPE_INTERVAL_SECONDS)
        else:
            self._evidence = ScrapeEvidence(model, self._metrics_urls())

    def _metrics_urls(self) -> dict[str, str]:
        return {role: f"{svc.predictor_url}/metrics" for role, svc in self.services.items()}

    def _update_targets(self) -> None:
        if self.prometheus is not None:
            targets = [svc.predictor_url.removeprefix("http://") for svc in self.services.values()]
            self.prometheus.set_targets(LOCAL_SCRAPE_JOB, targets)
            self.prometheus.wait_scraped(LOCAL_SCRAPE_JOB, timeout_seconds=30)
        elif isinstance(self._evidence, ScrapeEvidence):
            self._evidence.endpoints = self._metrics_urls()

    def close(self) -> None:
        """Stop everything this backend started."""
        if self.splitter is not None:
            self.splitter.stop()
            self.splitter = None
        for svc in [*self.services.values(), *self._retired]:
            svc.stop()
        self.services.clear()
        self._retired.clear()
        if self.prometheus is not None:
            self.prometheus.stop()
            self.prometheus = None

    def __enter__(self) -> LocalBackend:
        return self.open() if self.splitter is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def predict_url(self) -> str:
        """The v1 predict endpoint clients call (the splitter)."""
        if self.splitter is None:
            raise RolloutError("the local backend is not open")
        return self.splitter.predict_url

    # -- Backend protocol --------------------------------------------------------------------------------------

    def _split(self, percent: int) -> None:
        assert self.splitter is not None, "open() first"
        stable = self.services["stable"]
        canary = self.services.get("canary")
        split = {
            "stable": {"url": stable.url, "model_version": self.stable.version},
            "canary": {"url": canary.url, "model_version": self.canary.version} if canary else None,
            "canary_percent": percent if canary else 0,
            "sticky_header": self.canary_settings.sticky_header,
        }
        applied = self.splitter.set_split(split)
        if applied["canary_percent"] != split["canary_percent"]:
            raise RolloutError(f"the splitter applied {applied}, not {split}")

    def start_canary(self, percent: int) -> None:
        self.services["canary"] = self._serve(self.canary, "canary", self.canary_predictor_module)
        self._update_targets()
        self._split(percent)

    def set_canary_percent(self, percent: int) -> None:
        self._split(percent)

    def canary_percent(self) -> int | None:
        assert self.splitter is not None, "open() first"
        split = self.splitter.split()
        return int(split["canary_percent"]) if split.get("canary") else None

    def traffic_changed_by(self) -> str | None:
        """Unknown locally: the splitter does not record who moved its split."""
        return None

    def promote(self) -> None:
        """The canary version takes all traffic, served by a fresh pair labelled stable (as a new revision is)."""
        promoted = self._serve(self.canary, "stable")
        old_stable, old_canary = self.services["stable"], self.services.pop("canary", None)
        self.services["stable"] = promoted
        self.stable = self.canary
        self._split(0)
        self._retired += [svc for svc in (old_canary, old_stable) if svc is not None]

    def cleanup(self) -> None:
        """Stop the services the split no longer sends traffic to."""
        while self._retired:
            self._retired.pop().stop()
        self._update_targets()

    def rollback(self) -> None:
        canary = self.services.pop("canary", None)
        self._split(0)
        if canary is not None:
            self._retired.append(canary)

    def evidence(self) -> EvidenceSource:
        if self._evidence is None:
            raise RolloutError("the local backend is not open")
        return self._evidence

    def score_references(self) -> ScoreReferences | None:
        return score_references(self.settings, self.stable, self.canary)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "target": "local",
            "endpoint": self.splitter.url if self.splitter else None,
            "services": {role: svc.url for role, svc in self.services.items()},
            "prometheus": self.prometheus.url if self.prometheus else None,
        }
        if self.splitter is not None:
            try:
                out["split"] = self.splitter.split()
            except Exception as exc:  # noqa: BLE001 - status is informational
                out["split"] = f"unreadable: {exc}"
        return out


def report_root(settings: PlatformSettings) -> Path:
    """Folder of rollout reports and the local control file."""
    return settings.resolved_work_dir / "rollouts"
