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

if [[ "${1:-}" == "versions" ]]; then
  printf 'kubernetes %s\netcd %s\nkwok %s\n' "$KUBERNETES_VERSION" "$ETCD_VERSION" "$KWOK_VERSION"
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

want="kwok $KWOK_VERSION"
if stale kwok "$want"; then
  echo "kube/build.sh: building kwok $KWOK_VERSION (first time only)"
  GOBIN="$BIN" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  # The Stages kwok plays on its nodes and pods: node-fast (initialize), heartbeat with a Lease, pod-fast
  # (ready, Job pods complete, deletion), taken from the same pinned module.
  src="$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')"
  stage="$src/kustomize/stage"
  {
    for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
      pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
      echo "---"
      cat "$stage/$f"
    done
  } >"$KUBE/kwok-stages.yaml"
  echo "$want" >"$BIN/kwok.version"
fi
