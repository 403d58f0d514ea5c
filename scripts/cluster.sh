#!/usr/bin/env bash
# A kind cluster with everything mlplatform needs, at pinned versions (docs/install.md explains each step).
#   bash scripts/cluster.sh up     # create the cluster from kind-config.yaml, install prerequisites + the chart
#   bash scripts/cluster.sh down   # delete the cluster
# Needs docker (or podman), kind and kubectl on PATH; helm is the pinned one from `make tools`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HELM="${HELM:-$ROOT/.tools/bin/helm}"
CLUSTER=mlplatform

# Pinned versions. The node image is kind v0.31.0's default for Kubernetes 1.35 (the version the
# k8s tests validate against: tests/k8s/kube.py KUBERNETES_VERSION).
KIND_NODE_IMAGE="kindest/node:v1.35.0@sha256:452d707d4862f52530247495d180205e029056831160e22870e37e3f6c1ac31f"
CERT_MANAGER_VERSION=v1.21.2
KNATIVE_VERSION=knative-v1.20.0          # Knative Serving and net-kourier
KSERVE_VERSION=v0.21.0                   # matches kserve==0.21.0 in requirements.lock and ../shared/upstream CRDs
KFP_VERSION=2.17.0                       # matches kfp==2.17.0 in requirements.lock
KUBE_PROMETHEUS_STACK_VERSION=79.5.0     # Helm chart prometheus-community/kube-prometheus-stack
IMAGE_TAG=0.1.0

GH=https://github.com

need() { command -v "$1" >/dev/null || { echo "cluster.sh: $1 is required (docs/install.md)" >&2; exit 1; }; }
wait_deployments() { kubectl -n "$1" wait deployment --all --for=condition=Available --timeout="${2:-600s}"; }

up() {
  need kind; need kubectl; need docker
  [[ -x "$HELM" ]] || bash "$ROOT/scripts/tools.sh"

  echo "== kind cluster ($KIND_NODE_IMAGE)"
  kind get clusters | grep -qx "$CLUSTER" || kind create cluster --config "$ROOT/kind-config.yaml" --image "$KIND_NODE_IMAGE"
  kubectl config use-context "kind-$CLUSTER"

  echo "== cert-manager $CERT_MANAGER_VERSION"
  kubectl apply -f "$GH/cert-manager/cert-manager/releases/download/$CERT_MANAGER_VERSION/cert-manager.yaml"
  wait_deployments cert-manager

  echo "== Knative Serving $KNATIVE_VERSION + Kourier"
  kubectl apply -f "$GH/knative/serving/releases/download/$KNATIVE_VERSION/serving-crds.yaml"
  kubectl apply -f "$GH/knative/serving/releases/download/$KNATIVE_VERSION/serving-core.yaml"
  kubectl apply -f "$GH/knative/net-kourier/releases/download/$KNATIVE_VERSION/kourier.yaml"
  kubectl patch configmap/config-network -n knative-serving --type merge \
    -p '{"data":{"ingress-class":"kourier.ingress.networking.knative.dev"}}'
  # Pod fields the InferenceService uses: security context, PVC for the prediction log, emptyDir.
  kubectl patch configmap/config-features -n knative-serving --type merge -p '{"data":{
    "kubernetes.podspec-securitycontext":"enabled",
    "kubernetes.podspec-persistent-volume-claim":"enabled",
    "kubernetes.podspec-persistent-volume-write":"enabled",
    "kubernetes.podspec-emptydir":"enabled",
    "kubernetes.podspec-nodeselector":"enabled",
    "kubernetes.podspec-tolerations":"enabled"}}'
  # kind-config.yaml maps host 8080/8443 to node ports 80/443 of the control plane: expose Kourier there.
  kubectl -n kourier-system patch service kourier --type merge -p '{"spec":{"type":"NodePort","ports":[
    {"name":"http2","port":80,"targetPort":8080,"nodePort":31080},
    {"name":"https","port":443,"targetPort":8443,"nodePort":31443}]}}'
  wait_deployments knative-serving
  wait_deployments kourier-system

  echo "== KServe $KSERVE_VERSION"
  kubectl apply --server-side -f "$GH/kserve/kserve/releases/download/$KSERVE_VERSION/kserve.yaml"
  wait_deployments kserve
  kubectl apply --server-side -f "$GH/kserve/kserve/releases/download/$KSERVE_VERSION/kserve-cluster-resources.yaml"

  echo "== Kubeflow Pipelines $KFP_VERSION (standalone)"
  kubectl apply -k "$GH/kubeflow/pipelines/manifests/kustomize/cluster-scoped-resources?ref=$KFP_VERSION"
  kubectl wait --for condition=established --timeout=120s crd/applications.app.k8s.io
  kubectl apply -k "$GH/kubeflow/pipelines/manifests/kustomize/env/platform-agnostic?ref=$KFP_VERSION"
  wait_deployments kubeflow 900s

  echo "== kube-prometheus-stack $KUBE_PROMETHEUS_STACK_VERSION"
  "$HELM" repo add prometheus-community https://prometheus-community.github.io/helm-charts --force-update
  "$HELM" upgrade --install kube-prometheus-stack prometheus-community/kube-prometheus-stack \
    --version "$KUBE_PROMETHEUS_STACK_VERSION" --namespace monitoring --create-namespace --wait \
    --set prometheus.prometheusSpec.podMonitorSelectorNilUsesHelmValues=false \
    --set prometheus.prometheusSpec.serviceMonitorSelectorNilUsesHelmValues=false

  echo "== dev services (PostgreSQL, Redis, MinIO) and Secrets"
  kubectl create namespace mlplatform-deps --dry-run=client -o yaml | kubectl apply -f -
  kubectl create namespace mlplatform --dry-run=client -o yaml | kubectl apply -f -
  kubectl label namespace mlplatform pod-security.kubernetes.io/enforce=restricted --overwrite
  if ! kubectl -n mlplatform-deps get secret dev-services >/dev/null 2>&1; then
    local pg minio
    pg="$(openssl rand -hex 16)"; minio="$(openssl rand -hex 16)"
    kubectl -n mlplatform-deps create secret generic dev-services \
      --from-literal=postgres-password="$pg" --from-literal=minio-password="$minio"
    local pgsvc=postgres.mlplatform-deps.svc.cluster.local:5432
    kubectl -n mlplatform create secret generic mlplatform-mlflow-backend-store \
      --from-literal=uri="postgresql+psycopg://mlplatform:$pg@$pgsvc/mlflow"
    kubectl -n mlplatform create secret generic mlplatform-feast-registry \
      --from-literal=url="postgresql+psycopg://mlplatform:$pg@$pgsvc/feast"
    kubectl -n mlplatform create secret generic mlplatform-mlflow-artifact-store \
      --from-literal=AWS_ACCESS_KEY_ID=mlplatform --from-literal=AWS_SECRET_ACCESS_KEY="$minio"
    # KServe's storage initializer reads the model from MinIO with these (annotated) credentials.
    kubectl -n mlplatform create secret generic mlplatform-kserve-s3 \
      --from-literal=AWS_ACCESS_KEY_ID=mlplatform --from-literal=AWS_SECRET_ACCESS_KEY="$minio"
    kubectl -n mlplatform annotate secret mlplatform-kserve-s3 \
      serving.kserve.io/s3-endpoint=minio.mlplatform-deps.svc.cluster.local:9000 \
      serving.kserve.io/s3-usehttps=0 serving.kserve.io/s3-region=us-east-1
  fi
  # Registry access (docs/adr/0017-registry-access-control.md): the MLflow admin, the auth database, one MLflow user
  # per identity; the pipeline runner's also in namespace kubeflow, where the kind profile runs the steps.
  if ! kubectl -n mlplatform get secret mlplatform-mlflow-admin >/dev/null 2>&1; then
    local pgpass runner
    pgpass="$(kubectl -n mlplatform-deps get secret dev-services -o jsonpath='{.data.postgres-password}' | base64 -d)"
    kubectl -n mlplatform create secret generic mlplatform-mlflow-admin --from-literal=username=mlflow-admin \
      --from-literal=password="$(openssl rand -hex 16)" --from-literal=flask-secret-key="$(openssl rand -hex 32)"
    kubectl -n mlplatform create secret generic mlplatform-mlflow-auth-db \
      --from-literal=uri="postgresql+psycopg://mlplatform:$pgpass@postgres.mlplatform-deps.svc.cluster.local:5432/mlflow_auth"
    for identity in approver monitor; do
      kubectl -n mlplatform create secret generic "mlplatform-mlflow-$identity" \
        --from-literal=username="$identity" --from-literal=password="$(openssl rand -hex 16)"
    done
    runner="$(openssl rand -hex 16)"
    for namespace in mlplatform kubeflow; do
      kubectl -n "$namespace" create secret generic mlplatform-mlflow-pipeline-runner \
        --from-literal=username=pipeline-runner --from-literal=password="$runner"
    done
  fi
  kubectl apply -k "$ROOT/manifests/dev-services"
  wait_deployments mlplatform-deps

  echo "== mlplatform images and chart"
  if [[ "${BUILD_IMAGES:-1}" == 1 ]]; then
    make -C "$ROOT" images PUSH=0 IMAGE_TAG="$IMAGE_TAG"
  fi
  for image in mlplatform-serving mlplatform-components; do
    kind load docker-image --name "$CLUSTER" "ghcr.io/mlplatform/$image:$IMAGE_TAG"
  done
  # The MLflow artifact bucket, created with boto3 from the serving image (restricted pod security).
  kubectl -n mlplatform-deps delete pod create-bucket --ignore-not-found
  kubectl -n mlplatform-deps run create-bucket --rm -i --restart=Never \
    --image="ghcr.io/mlplatform/mlplatform-serving:$IMAGE_TAG" --overrides='{"spec":{
      "securityContext":{"runAsNonRoot":true,"runAsUser":10001,"seccompProfile":{"type":"RuntimeDefault"}},
      "containers":[{"name":"create-bucket","image":"ghcr.io/mlplatform/mlplatform-serving:'"$IMAGE_TAG"'",
        "command":["python","-c","import os,boto3; s3=boto3.client(\"s3\",endpoint_url=\"http://minio:9000\",aws_access_key_id=\"mlplatform\",aws_secret_access_key=os.environ[\"P\"]); names=[b[\"Name\"] for b in s3.list_buckets()[\"Buckets\"]]; \"mlflow\" in names or s3.create_bucket(Bucket=\"mlflow\")"],
        "env":[{"name":"P","valueFrom":{"secretKeyRef":{"name":"dev-services","key":"minio-password"}}}],
        "securityContext":{"allowPrivilegeEscalation":false,"capabilities":{"drop":["ALL"]},"readOnlyRootFilesystem":true}}]}}'
  "$HELM" upgrade --install mlplatform "$ROOT/helm/mlplatform" --namespace mlplatform \
    -f "$ROOT/helm/mlplatform/profiles/kind-values.yaml" --wait --timeout 10m
  "$HELM" test mlplatform --namespace mlplatform
  echo "cluster.sh: ready. Next: docs/install.md, 'Run the pipeline'."
}

down() {
  need kind
  kind delete cluster --name "$CLUSTER"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
