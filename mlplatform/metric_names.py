"""Names of the platform's Prometheus metrics and labels: one place for serving, PromQL and dashboards."""

from __future__ import annotations

#: The series names exported by serving/metrics.py (ServingMetrics).
REQUESTS = "mlplatform_inference_requests_total"
STAGE_SECONDS_BUCKET = "mlplatform_inference_stage_seconds_bucket"
SCORE_BUCKET = "mlplatform_prediction_score_bucket"
FALLBACKS = "mlplatform_prediction_fallbacks_total"
#: Outcomes that are the server's fault; invalid and unauthorized requests are the client's.
SERVER_ERROR_OUTCOMES = ("error", "unavailable")
#: The component whose series carry the version being judged. On a cluster KServe splits traffic between the
#: predictor revisions (`spec.predictor.canaryTrafficPercent`) while one transformer serves both, so only the
#: predictor's requests, latency and scores belong to one version; the local backend judges the same series.
ANALYSED_COMPONENT = "predictor"
#: The predictor's latency stage: validation, the model and the post-assertion of one request.
LATENCY_STAGE = "predict"
