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
