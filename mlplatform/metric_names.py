"""Names of the platform's Prometheus metrics and labels: one place for serving, PromQL and dashboards.

The serving processes (serving/metrics.py) export these families; canary analysis (mlplatform/rollout/promql.py,
mlplatform/rollout/evidence.py) and the Grafana dashboards (mlplatform/monitoring/dashboards.py) read them.
Counter names carry `_total` as exported; a histogram's series add `_bucket`, `_sum` and `_count`.
"""

from __future__ import annotations

#: The bounded labels every serving series carries (never a request id or a customer id).
SERVING_LABELS = ("model_name", "model_version", "role", "component")

# --- families of the serving processes -------------------------------------------------------------------------
REQUESTS = "mlplatform_inference_requests_total"
INSTANCES = "mlplatform_inference_instances_total"
STAGE_SECONDS = "mlplatform_inference_stage_seconds"
FEATURE_LOOKUP_SECONDS = "mlplatform_feature_lookup_seconds"
FEATURE_MISSES = "mlplatform_feature_misses_total"
FEATURE_STORE_ERRORS = "mlplatform_feature_store_errors_total"
SCORE = "mlplatform_prediction_score"
FALLBACKS = "mlplatform_prediction_fallbacks_total"
MODEL_INFO = "mlplatform_model_info"
PREDICTION_LOG_RECORDS = "mlplatform_prediction_log_records_total"
PREDICTION_LOG_ERRORS = "mlplatform_prediction_log_errors_total"
EVENT_BACKLOG = "mlplatform_event_backlog"
EVENT_DELIVERY_ERRORS = "mlplatform_event_delivery_errors_total"

# --- families of the stream feature processor (mlplatform/features/stream.py) -----------------------------------
STREAM_EVENTS = "mlplatform_stream_events_total"
STREAM_PUSH_ERRORS = "mlplatform_stream_push_errors_total"
STREAM_PUSH_SECONDS = "mlplatform_stream_push_seconds"
STREAM_FRESHNESS_SECONDS = "mlplatform_stream_freshness_seconds"
STREAM_STATE_EVENTS = "mlplatform_stream_state_events"
STREAM_LAST_COMMIT = "mlplatform_stream_last_commit_timestamp_seconds"

# --- series read by queries ------------------------------------------------------------------------------------
STAGE_SECONDS_BUCKET = f"{STAGE_SECONDS}_bucket"
SCORE_BUCKET = f"{SCORE}_bucket"

#: Request outcomes (label `outcome` of REQUESTS).
OUTCOMES = ("ok", "invalid", "unauthorized", "unavailable", "error")
#: Outcomes that are the server's fault; invalid and unauthorized requests are the client's.
SERVER_ERROR_OUTCOMES = ("error", "unavailable")
#: The component whose series carry the version being judged. On a cluster KServe splits traffic between the
#: predictor revisions (`spec.predictor.canaryTrafficPercent`) while one transformer serves both, so only the
#: predictor's requests, latency and scores belong to one version; the local backend judges the same series.
ANALYSED_COMPONENT = "predictor"
#: The predictor's latency stage: validation, the model and the post-assertion of one request.
LATENCY_STAGE = "predict"
