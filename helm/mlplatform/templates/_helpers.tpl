{{/* vim: set filetype=mustache: */}}

{{/*
The chart name, truncated to 63 characters (the DNS label limit) without a trailing dash.
*/}}
{{- define "mlplatform.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The fully qualified app name: the release name, plus the chart name when the release name does not
already contain it. Truncated to 63 characters.
*/}}
{{- define "mlplatform.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The name of one component's objects: "<fullname>-<component>", truncated to 63 characters.
Usage: {{ include "mlplatform.componentName" (dict "context" $ "component" "mlflow") }}
*/}}
{{- define "mlplatform.componentName" -}}
{{- printf "%s-%s" (include "mlplatform.fullname" .context) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mlplatform.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Selector labels: stable for the life of a release (never put the chart version here).
Usage: {{ include "mlplatform.selectorLabels" (dict "context" $ "component" "mlflow") }}
*/}}
{{- define "mlplatform.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mlplatform.name" .context }}
app.kubernetes.io/instance: {{ .context.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end -}}

{{/*
Common labels: the selector labels plus chart, version and manager, and the user's commonLabels.
Usage: {{ include "mlplatform.labels" (dict "context" $ "component" "mlflow") }}
*/}}
{{- define "mlplatform.labels" -}}
helm.sh/chart: {{ include "mlplatform.chart" .context }}
{{ include "mlplatform.selectorLabels" . }}
app.kubernetes.io/version: {{ .context.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .context.Release.Service }}
app.kubernetes.io/part-of: mlplatform
{{- with .context.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
A full image reference from {registry, repository, tag, digest}; the digest wins over the tag.
Usage: {{ include "mlplatform.image" .Values.image.serving }}
*/}}
{{- define "mlplatform.image" -}}
{{- $registry := .registry -}}
{{- $ref := ternary .repository (printf "%s/%s" $registry .repository) (empty $registry) -}}
{{- if .digest -}}
{{- printf "%s@%s" $ref .digest -}}
{{- else -}}
{{- printf "%s:%s" $ref (required "image tag or digest is required: set image.<name>.tag or image.<name>.digest" .tag | toString) -}}
{{- end -}}
{{- end -}}

{{/*
The name of a component's ServiceAccount: the given name, or "<fullname>-<component>" when the chart
creates it, else "default".
Usage: {{ include "mlplatform.serviceAccountName" (dict "context" $ "component" "mlflow" "serviceAccount" .Values.mlflow.serviceAccount) }}
*/}}
{{- define "mlplatform.serviceAccountName" -}}
{{- if .serviceAccount.create -}}
{{- default (include "mlplatform.componentName" .) .serviceAccount.name -}}
{{- else -}}
{{- default "default" .serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
imagePullSecrets for a pod spec.
*/}}
{{- define "mlplatform.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
Host name of the MLflow tracking service inside the cluster and its URL.
*/}}
{{- define "mlplatform.mlflow.url" -}}
{{- printf "http://%s.%s.svc.cluster.local:%v" (include "mlplatform.componentName" (dict "context" . "component" "mlflow")) .Release.Namespace .Values.mlflow.service.port -}}
{{- end -}}

{{- define "mlplatform.feast.url" -}}
{{- printf "http://%s.%s.svc.cluster.local:%v" (include "mlplatform.componentName" (dict "context" . "component" "feature-server")) .Release.Namespace .Values.feast.featureServer.service.port -}}
{{- end -}}

{{/*
Redis "host:port" as Feast's connection string expects it (the password, if any, is appended from a
secret in the container's environment; see feature_repo/feature_store_redis_postgres.yaml).
*/}}
{{- define "mlplatform.feast.redis" -}}
{{- printf "%s:%v" (required "feast.redis.host is required: the Redis host of the Feast online store (e.g. redis-master.mlplatform-deps)" .Values.feast.redis.host) .Values.feast.redis.port -}}
{{- end -}}

{{/*
Environment variables that point Feast at its registry (from a secret) and online store.
Used by the feature server and the transformer.
*/}}
{{- define "mlplatform.feast.env" -}}
- name: MLPLATFORM_FEAST_REGISTRY
  valueFrom:
    secretKeyRef:
      name: {{ required "feast.registry.existingSecret is required: a Secret holding the SQLAlchemy URL of the Feast registry database (postgresql+psycopg://user:password@host:5432/feast)" .Values.feast.registry.existingSecret }}
      key: {{ .Values.feast.registry.existingSecretKey }}
{{- if .Values.feast.redis.existingSecret }}
- name: MLPLATFORM_FEAST_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.feast.redis.existingSecret }}
      key: {{ .Values.feast.redis.existingSecretPasswordKey }}
- name: MLPLATFORM_FEAST_REDIS
  value: "{{ include "mlplatform.feast.redis" . }},password=$(MLPLATFORM_FEAST_REDIS_PASSWORD)"
{{- else }}
- name: MLPLATFORM_FEAST_REDIS
  value: {{ include "mlplatform.feast.redis" . | quote }}
{{- end }}
{{- end -}}

{{/*
The PersistentVolumeClaim of the prediction log (transformer writes, monitor reads).
*/}}
{{- define "mlplatform.predictionLog.claim" -}}
{{- default (include "mlplatform.componentName" (dict "context" . "component" "prediction-log")) .Values.fraudDetector.predictionLog.persistence.existingClaim -}}
{{- end -}}

{{/*
Pod-level scheduling keys (nodeSelector, tolerations, affinity) of a component's values.
Usage: {{ include "mlplatform.scheduling" .Values.monitoring.monitor | nindent 6 }}
*/}}
{{- define "mlplatform.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
NetworkPolicy peer admitting the `helm test` pod (templates/tests/test-endpoints.yaml), when it is rendered.
Usage: {{- include "mlplatform.networkPolicy.helmTest" . | nindent 8 }} inside an ingress rule's `from` list.
*/}}
{{- define "mlplatform.networkPolicy.helmTest" -}}
{{- if .Values.tests.enabled }}
- podSelector:
    matchLabels:
      {{- include "mlplatform.selectorLabels" (dict "context" . "component" "test") | nindent 6 }}
{{- end }}
{{- end -}}

{{/*
The fraud detector's predictor HTTP port inside a collocated pod (the transformer owns 8080, the port Knative
routes to, and calls the predictor on localhost here). Separate pods: each serves 8080.
*/}}
{{- define "mlplatform.fraudDetector.predictorPort" -}}
{{- if eq .Values.fraudDetector.layout "collocated" }}8085{{ else }}8080{{ end -}}
{{- end }}

{{/* Collocated, the transformer calls the model over the predictor's tensor hop (serving/tensor_hop.py): a Unix
socket in the pod's `tmp` emptyDir, which both containers mount at /tmp (owner-only; nothing outside the pod). */}}
{{- define "mlplatform.fraudDetector.hopSocketEnv" -}}
- name: MLPLATFORM_SERVING_PREDICTOR_SOCKET
  value: /tmp/mlplatform-hop/predictor.sock
{{- end }}

{{/*
The fraud detector's transformer container, alike in both layouts (fraudDetector.layout) but for its name, ports
and where its version and role come from.
- collocated: KServe's `transformer-container` of every predictor revision; it calls the predictor on localhost
  and reports the revision's version and role, which KServe's controller fills in from the InferenceService's
  annotations (placeholders) when it builds each revision, as mlplatform/deploy/inferenceservice.py sets them.
- separate: the transformer component's `kserve-container` (KServe adds --predictor_host and --http_port); one
  transformer revision fronts every predictor revision, so its series carry model_version "shared", role stable.
*/}}
{{- define "mlplatform.fraudDetector.transformerContainer" -}}
{{- $fd := .Values.fraudDetector -}}
{{- $collocated := eq $fd.layout "collocated" -}}
- name: {{ ternary "transformer-container" "kserve-container" $collocated }}
  image: {{ include "mlplatform.image" .Values.image.serving }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command: ["python", "-m", "serving.transformer"]
  args:
    - --model_name={{ $fd.name }}
    {{- if $collocated }}
    - --http_port=8080
    - --grpc_port=8081
    - --predictor_host=localhost:{{ include "mlplatform.fraudDetector.predictorPort" . }}
    - --enable_predictor_health_check
    {{- end }}
  env:
    {{- if $collocated }}
    {{- include "mlplatform.fraudDetector.hopSocketEnv" . | nindent 4 }}
    {{- end }}
    - name: MLPLATFORM_SERVING_MODEL_VERSION
      value: {{ ternary "{{index .Annotations `mlplatform.io/model-version`}}" "shared" $collocated | quote }}
    - name: MLPLATFORM_SERVING_ROLE
      value: {{ ternary "{{index .Annotations `mlplatform.io/role`}}" "stable" $collocated | quote }}
    - name: MLPLATFORM_SERVING_FEAST_CONFIG_FILE
      value: feature_store_redis_postgres.yaml
    {{- include "mlplatform.feast.env" . | nindent 4 }}
    - name: MLPLATFORM_SERVING_PREDICTION_LOG_DIR
      value: /var/lib/mlplatform/predictions
    {{- include "mlplatform.kafka.env" . | nindent 4 }}
    {{- with $fd.transformer.authToken.existingSecret }}
    - name: MLPLATFORM_SERVING_AUTH_TOKEN
      valueFrom:
        secretKeyRef:
          name: {{ . }}
          key: {{ $fd.transformer.authToken.existingSecretKey }}
    {{- end }}
  ports:
    - containerPort: 8080
      protocol: TCP
  {{- if $collocated }}
  # ready once the predictor beside it is (--enable_predictor_health_check): no traffic to a half-started pod
  readinessProbe:
    httpGet:
      path: /v2/models/{{ $fd.name }}/ready
      port: 8080
  {{- end }}
  resources:
    {{- toYaml $fd.transformer.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.containerSecurityContext | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
    - name: prediction-log
      mountPath: /var/lib/mlplatform/predictions
    {{- if .Values.kafka.enabled }}
    - name: event-spool
      mountPath: /var/lib/mlplatform/events
    {{- with .Values.kafka.tls.caSecret }}
    - name: kafka-ca
      mountPath: /etc/mlplatform/kafka-ca
      readOnly: true
    {{- end }}
    {{- end }}
{{- end }}

{{/* The volumes of the pod the transformer runs in: /tmp, and the prediction log (an emptyDir or a claim). */}}
{{- define "mlplatform.fraudDetector.transformerVolumes" -}}
{{- $fd := .Values.fraudDetector -}}
- name: tmp
  emptyDir:
    sizeLimit: 512Mi
- name: prediction-log
  {{- if $fd.predictionLog.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ include "mlplatform.predictionLog.claim" . }}
  {{- else }}
  emptyDir:
    sizeLimit: {{ $fd.predictionLog.emptyDirSizeLimit }}
  {{- end }}
{{- if .Values.kafka.enabled }}
# events wait here while the brokers are away; an emptyDir outlives container restarts (not the pod)
- name: event-spool
  emptyDir:
    sizeLimit: {{ .Values.kafka.spoolSizeLimit }}
{{- with .Values.kafka.tls.caSecret }}
- name: kafka-ca
  secret:
    secretName: {{ . }}
    items:
      - key: {{ $.Values.kafka.tls.caSecretKey }}
        path: ca.crt
{{- end }}
{{- end }}
{{- end }}

{{/*
How a process reaches the brokers (mlplatform/events.py KafkaConnection), under its settings' prefix: call with
(dict "context" $ "prefix" "MLPLATFORM_SERVING_" "username" <Kafka user> "existingSecret" <its password's Secret> "secretValue" <the value naming it>).
*/}}
{{- define "mlplatform.kafka.connectionEnv" -}}
{{- $k := .context.Values.kafka -}}
- name: {{ .prefix }}KAFKA_BOOTSTRAP_SERVERS
  value: {{ required "kafka.enabled needs kafka.bootstrapServers (host:port of the brokers)" $k.bootstrapServers | quote }}
- name: {{ .prefix }}KAFKA_SECURITY_PROTOCOL
  value: {{ $k.securityProtocol }}
{{- if $k.tls.caSecret }}
- name: {{ .prefix }}KAFKA_SSL_CA_LOCATION
  value: /etc/mlplatform/kafka-ca/ca.crt
{{- end }}
{{- if hasPrefix "SASL" $k.securityProtocol }}
- name: {{ .prefix }}KAFKA_SASL_MECHANISM
  value: {{ $k.sasl.mechanism }}
- name: {{ .prefix }}KAFKA_SASL_USERNAME
  value: {{ .username | quote }}
- name: {{ .prefix }}KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ required (printf "kafka.securityProtocol SASL_* needs %s (the Secret with Kafka user %s's password)" .secretValue .username) .existingSecret }}
      key: {{ $k.sasl.existingSecretKey }}
{{- end }}
{{- end }}

{{/* The transformer's Kafka settings (serving/settings.py MLPLATFORM_SERVING_*), when kafka.enabled. */}}
{{- define "mlplatform.kafka.env" -}}
{{- $k := .Values.kafka -}}
{{- if $k.enabled }}
{{ include "mlplatform.kafka.connectionEnv" (dict "context" . "prefix" "MLPLATFORM_SERVING_" "username" $k.sasl.username "existingSecret" $k.sasl.existingSecret "secretValue" "kafka.sasl.existingSecret") }}
- name: MLPLATFORM_SERVING_EVENT_SPOOL_DIR
  value: /var/lib/mlplatform/events
{{- end }}
{{- end }}
