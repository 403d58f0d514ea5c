#!/usr/bin/env bash
# Build the Kubernetes tools the k8s tests use, at pinned versions, into a project-local folder.
#
#   bash scripts/tools.sh          # build what is missing or at the wrong version (fast when done)
#   bash scripts/tools.sh versions # print the pinned versions
#   bash scripts/tools.sh loadgen  # only the serving benchmarks' load generator (benchmarks/loadgen, Go stdlib)
#
# Each Go tool is built from the Go module proxy with `go install MODULE@VERSION` (GOBIN=.tools/bin)
# and its version is recorded in .tools/bin/<tool>.version; a tool is rebuilt only when that record
# differs from the pin. checkov (the security linter; kube-linter's module is not served by the proxy)
# is a Python tool with a large dependency tree of its own, so it lives in its own virtualenv
# (.tools/checkov) installed from a committed lock (scripts/checkov.lock), apart from the project's.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="${MLPLATFORM_TOOLS_DIR:-$ROOT/.tools}"
BIN="$TOOLS_DIR/bin"

# Pinned versions. Each builds with the Go on this machine (go >= 1.26, GOTOOLCHAIN=local).
HELM_VERSION=v3.22.0
KUBECONFORM_VERSION=v0.8.0
KUSTOMIZE_VERSION=v5.8.2
CHECKOV_VERSION=3.3.30

declare -A MODULES=(
  [helm]="helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  [kubeconform]="github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"
  [kustomize]="sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
)

if [[ "${1:-}" == "versions" ]]; then
  printf 'helm %s\nkubeconform %s\nkustomize %s\ncheckov %s\n' \
    "$HELM_VERSION" "$KUBECONFORM_VERSION" "$KUSTOMIZE_VERSION" "$CHECKOV_VERSION"
  exit 0
fi

mkdir -p "$BIN"

build_go_tool() {
  local name="$1" module="${MODULES[$1]}"
  local record="$BIN/$name.version"
  if [[ -x "$BIN/$name" && -f "$record" && "$(cat "$record")" == "$module" ]]; then
    return 0
  fi
  command -v go >/dev/null || { echo "tools.sh: Go is needed to build $name ($module)" >&2; exit 1; }
  echo "tools.sh: building $module (first time only; a few minutes on 2 cores)"
  # -trimpath + CGO off: reproducible, static binaries. ldflags put helm's version where `helm version` reads it.
  local ldflags="-s -w"
  if [[ "$name" == "helm" ]]; then
    ldflags+=" -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  fi
  GOBIN="$BIN" GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-buildvcs=false" \
    go install -trimpath -ldflags "$ldflags" "$module"
  echo "$module" >"$record"
}

# The benchmarks' load generator: our own Go source (standard library only, nothing downloaded), rebuilt when it
# changes (the record is a hash of its files).
build_loadgen() {
  local src="$ROOT/benchmarks/loadgen" record="$BIN/loadgen.version" want
  want="$(cat "$src/go.mod" "$src"/*.go | sha256sum | cut -d' ' -f1)"
  if [[ -x "$BIN/loadgen" && -f "$record" && "$(cat "$record")" == "$want" ]]; then
    return 0
  fi
  command -v go >/dev/null || { echo "tools.sh: Go is needed to build the load generator ($src)" >&2; exit 1; }
  (cd "$src" && GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-buildvcs=false" go build -trimpath -ldflags "-s -w" -o "$BIN/loadgen" .)
  echo "$want" >"$record"
}

install_checkov() {
  local venv="$TOOLS_DIR/checkov" lock="$ROOT/scripts/checkov.lock"
  local record="$venv/.installed"
  local want
  want="$CHECKOV_VERSION $(sha256sum "$lock" | cut -d' ' -f1)"
  if [[ -x "$venv/bin/checkov" && -f "$record" && "$(cat "$record")" == "$want" ]]; then
    return 0
  fi
  echo "tools.sh: installing checkov $CHECKOV_VERSION into $venv (first time only)"
  local python="${PYTHON_BOOT:-python3.11}"
  command -v "$python" >/dev/null || python=python3
  rm -rf "$venv"
  "$python" -m venv "$venv"
  local uv="$ROOT/.venv/bin/uv"
  if [[ -x "$uv" ]]; then
    "$uv" pip sync --python "$venv/bin/python" "$lock"
  else
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$lock"
  fi
  grep -q "^checkov==$CHECKOV_VERSION\$" "$lock" || { echo "tools.sh: $lock does not pin checkov==$CHECKOV_VERSION" >&2; exit 1; }
  # Bytecode once (checkov starts in 6 s instead of 12 s where PYTHONDONTWRITEBYTECODE is set); a file that
  # does not compile under this Python is never imported.
  "$venv/bin/python" -m compileall -qq -j 0 "$venv/lib" || true
  echo "$want" >"$record"
}

build_loadgen
if [[ "${1:-}" == "loadgen" ]]; then
  exit 0
fi
for tool in helm kubeconform kustomize; do
  build_go_tool "$tool"
done
install_checkov
ln -sf ../checkov/bin/checkov "$BIN/checkov"
