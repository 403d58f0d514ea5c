#!/usr/bin/env bash
# Build the Kubernetes control plane the cluster tests and `make kube-up` run, at pinned versions, from the
# Go module proxy, into the project-local tools folder (.tools/kube/bin). No container engine is needed.
#
#   bash scripts/kube/build.sh           # build what is missing or whose pin changed (seconds when built)
#   bash scripts/kube/build.sh versions  # print the pinned versions
#
# - kube-apiserver, kube-controller-manager, kube-scheduler, kubectl: k8s.io/kubernetes cannot be
#   `go install`ed (its go.mod replaces its staging modules with local folders), so scripts/kube/controlplane
#   is a wrapper module that requires it and replaces each staging module with its published v0.X.Y. The
#   version is stamped with -ldflags: without it the server reports v0.0.0-master and helm/kubectl refuse it.
# - etcd: Debian's 3.4 lacks RequestWatchProgress, which current clients need for watch lists;
#   scripts/kube/etcd wraps go.etcd.io/etcd/server/v3.
# - kwok: fake nodes (no kubelet, no containers); its pinned module's node and pod Stages are copied beside it.
# - KServe's controller manager (scripts/kube/kserve wraps github.com/kserve/kserve with its own controller-runtime
#   replace) and Knative Serving's controller and autoscaler (scripts/kube/knative); beside them, from the same
#   pinned modules, the CRDs, the default ConfigMaps, KServe's webhook configurations and Knative's activator
#   Deployment that scripts/kube/sandbox.py installs. The autoscaler's stats server address is a constant
#   (":8080", every interface) in Knative's source; the build overlays that one line so the sandbox can bind it
#   to loopback on a free port (KNATIVE_STATS_SERVER_ADDR).
# - Kubeflow Trainer's controller manager (scripts/kube/trainer) and JobSet's (scripts/kube/jobset: its own module,
#   as it builds against an older controller-runtime than Trainer's), with their CRDs, their webhook configurations
#   and the torch-distributed ClusterTrainingRuntime from the same pinned modules.
#
# Each group is rebuilt only when its record (pin + hash of its wrapper go.mod/go.sum) differs.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/scripts/kube"
TOOLS_DIR="${MLPLATFORM_TOOLS_DIR:-$ROOT/.tools}"
KUBE="$TOOLS_DIR/kube"
BIN="$KUBE/bin"

KUBERNETES_VERSION=v1.35.4 # the wrapper go.mod pins k8s.io/kubernetes and its staging modules at v0.35.4
ETCD_VERSION=v3.6.5
KWOK_VERSION=v0.8.0
KSERVE_VERSION=v0.16.0    # scripts/kube/kserve/go.mod
KNATIVE_VERSION=v0.44.0   # scripts/kube/knative/go.mod: the Knative Serving KServe v0.16 is built against
TRAINER_VERSION=v2.2.0    # scripts/kube/trainer/go.mod (v2.0.0's TrainJob has no spec.runtimePatches)
JOBSET_VERSION=v0.11.1    # scripts/kube/jobset/go.mod: the JobSet Trainer v2.2 is built against
# The kwok Stages: fast node start and heartbeat; pods ready at once, Job pods completed, deleted at once; and the
# chaos Stage failing a pod labelled pod-container-running-failed.stage.kwok.x-k8s.io=true (a TrainJob that fails).
KWOK_STAGES="node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml
  pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml pod/chaos/pod-container-running-failed.yaml"

if [[ "${1:-}" == "versions" ]]; then
  printf 'kubernetes %s\netcd %s\nkwok %s\nkserve %s\nknative-serving %s\ntrainer %s\njobset %s\n' \
    "$KUBERNETES_VERSION" "$ETCD_VERSION" "$KWOK_VERSION" "$KSERVE_VERSION" "$KNATIVE_VERSION" "$TRAINER_VERSION" \
    "$JOBSET_VERSION"
  exit 0
fi

command -v go >/dev/null || { echo "kube/build.sh: Go is needed to build the control plane" >&2; exit 1; }
mkdir -p "$BIN"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-buildvcs=false"

# stale NAME WANT: true when the record of NAME differs from WANT (then it is rebuilt)
stale() {
  [[ ! -f "$BIN/$1.version" || "$(cat "$BIN/$1.version")" != "$2" ]]
}

wrapper_hash() {
  cat "$HERE/$1/go.mod" "$HERE/$1/go.sum" | sha256sum | cut -c1-16
}

# The Kubernetes commands (about 10 minutes the first time on 2 cores).
want="kubernetes $KUBERNETES_VERSION $(wrapper_hash controlplane)"
if stale kubernetes "$want"; then
  grep -q "k8s.io/kubernetes $KUBERNETES_VERSION" "$HERE/controlplane/go.mod" \
    || { echo "kube/build.sh: controlplane/go.mod does not require k8s.io/kubernetes $KUBERNETES_VERSION" >&2; exit 1; }
  echo "kube/build.sh: building kube-apiserver, kube-controller-manager, kube-scheduler, kubectl $KUBERNETES_VERSION (first time only)"
  minor="${KUBERNETES_VERSION#v1.}"
  minor="${minor%%.*}"
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.gitCommit=$KUBERNETES_VERSION -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  (cd "$HERE/controlplane" && go build -trimpath -ldflags "$ldflags" -o "$BIN/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
  echo "$want" >"$BIN/kubernetes.version"
fi

want="etcd $ETCD_VERSION $(wrapper_hash etcd)"
if stale etcd "$want"; then
  grep -q "go.etcd.io/etcd/server/v3 $ETCD_VERSION" "$HERE/etcd/go.mod" \
    || { echo "kube/build.sh: etcd/go.mod does not require go.etcd.io/etcd/server/v3 $ETCD_VERSION" >&2; exit 1; }
  echo "kube/build.sh: building etcd $ETCD_VERSION (first time only)"
  (cd "$HERE/etcd" && go build -trimpath -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3)
  echo "$want" >"$BIN/etcd.version"
fi

want="kwok $KWOK_VERSION $(echo $KWOK_STAGES | sha256sum | cut -c1-16)"
if stale kwok "$want"; then
  echo "kube/build.sh: building kwok $KWOK_VERSION (first time only)"
  GOBIN="$BIN" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  # The Stages kwok plays on its nodes and pods (KWOK_STAGES), taken from the same pinned module.
  src="$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
  stage="$src/kustomize/stage"
  {
    for f in $KWOK_STAGES; do
      echo "---"
      cat "$stage/$f"
    done
  } >"$KUBE/kwok-stages.yaml"
  echo "$want" >"$BIN/kwok.version"
fi

yamls() { # yamls FILE...: one multi-document YAML stream
  for f in "$@"; do echo "---"; cat "$f"; done
}

module_dir() { # module_dir WRAPPER MODULE: the folder of MODULE at the version the wrapper pins
  (cd "$HERE/$1" && go list -m -f '{{.Dir}}' "$2")
}

want="kserve $KSERVE_VERSION $(wrapper_hash kserve)"
if stale kserve "$want"; then
  echo "kube/build.sh: building KServe's controller manager $KSERVE_VERSION (first time only)"
  (cd "$HERE/kserve" && go mod download github.com/kserve/kserve \
    && go build -trimpath -ldflags "-s -w" -o "$BIN/kserve-manager" github.com/kserve/kserve/cmd/manager)
  src="$(module_dir kserve github.com/kserve/kserve)/config"
  mkdir -p "$KUBE/kserve"
  "$TOOLS_DIR/bin/kustomize" build "$src/crd" >"$KUBE/kserve/crds.yaml"
  cp "$src/configmap/inferenceservice.yaml" "$src/webhook/manifests.yaml" "$KUBE/kserve/"
  echo "$want" >"$BIN/kserve.version"
fi

want="knative $KNATIVE_VERSION $(wrapper_hash knative)"
if stale knative "$want"; then
  echo "kube/build.sh: building Knative Serving's controller and autoscaler $KNATIVE_VERSION (first time only)"
  (cd "$HERE/knative" && go mod download knative.dev/serving knative.dev/networking knative.dev/caching)
  serving="$(module_dir knative knative.dev/serving)"
  networking="$(module_dir knative knative.dev/networking)"
  caching="$(module_dir knative knative.dev/caching)"
  # The autoscaler is built from a copy of its package placed (by a build overlay, nothing written to the
  # checkout) inside the wrapper module, with the stats server's address read from the environment.
  overlay="$(mktemp -d)"
  sed -e 's|^\tstatsServerAddr = ":8080"$||' -e 's|^\t"fmt"$|\t"fmt"\n\t"os"|' \
    -e 's|^func main() {$|var statsServerAddr = os.Getenv("KNATIVE_STATS_SERVER_ADDR")\n\nfunc main() {\n\tif statsServerAddr == "" {\n\t\tstatsServerAddr = ":8080"\n\t}|' \
    "$serving/cmd/autoscaler/main.go" >"$overlay/main.go"
  grep -q 'KNATIVE_STATS_SERVER_ADDR' "$overlay/main.go" || { echo "kube/build.sh: the autoscaler overlay did not apply" >&2; exit 1; }
  printf '{"Replace": {"%s": "%s", "%s": "%s"}}\n' \
    "$HERE/knative/autoscaler/main.go" "$overlay/main.go" \
    "$HERE/knative/autoscaler/leaderelection.go" "$serving/cmd/autoscaler/leaderelection.go" >"$overlay/overlay.json"
  (cd "$HERE/knative" \
    && go build -trimpath -ldflags "-s -w" -o "$BIN/knative-controller" knative.dev/serving/cmd/controller \
    && go build -trimpath -ldflags "-s -w" -overlay "$overlay/overlay.json" -o "$BIN/knative-autoscaler" ./autoscaler)
  rm -rf "$overlay"
  mkdir -p "$KUBE/knative"
  yamls "$serving"/config/core/300-resources/*.yaml "$networking"/config/{ingress,certificate,domain-claim,serverlessservice}.yaml \
    "$caching/config/image.yaml" >"$KUBE/knative/crds.yaml"
  yamls "$serving"/config/core/configmaps/*.yaml "$networking/config/config-network.yaml" >"$KUBE/knative/configmaps.yaml"
  cp "$serving/config/core/deployments/activator.yaml" "$KUBE/knative/activator.yaml"
  echo "$want" >"$BIN/knative.version"
fi

want="trainer $TRAINER_VERSION jobset $JOBSET_VERSION $(wrapper_hash trainer) $(wrapper_hash jobset)"
if stale trainer "$want"; then
  echo "kube/build.sh: building Kubeflow Trainer's controller manager $TRAINER_VERSION and JobSet's $JOBSET_VERSION (first time only)"
  (cd "$HERE/trainer" && go mod download github.com/kubeflow/trainer/v2 \
    && go build -trimpath -ldflags "-s -w" -o "$BIN/trainer-manager" github.com/kubeflow/trainer/v2/cmd/trainer-controller-manager)
  (cd "$HERE/jobset" && go mod download sigs.k8s.io/jobset \
    && go build -trimpath -ldflags "-s -w" -o "$BIN/jobset-manager" sigs.k8s.io/jobset)
  trainer="$(module_dir trainer github.com/kubeflow/trainer/v2)"
  jobset="$(module_dir jobset sigs.k8s.io/jobset)"
  mkdir -p "$KUBE/trainer"
  yamls "$trainer"/manifests/base/crds/trainer.kubeflow.org_*.yaml "$jobset"/config/components/crd/bases/*.yaml \
    >"$KUBE/trainer/crds.yaml"
  "$TOOLS_DIR/bin/kustomize" build "$trainer/manifests/base/webhook" >"$KUBE/trainer/webhooks-trainer.yaml"
  "$TOOLS_DIR/bin/kustomize" build "$jobset/config/components/webhook" >"$KUBE/trainer/webhooks-jobset.yaml"
  cp "$trainer/manifests/base/runtimes/torch_distributed.yaml" "$KUBE/trainer/runtimes.yaml"
  echo "$want" >"$BIN/trainer.version"
fi
