#!/usr/bin/env bash
# Installs the tools that scripts/check-chart.sh uses to check the Helm chart
# charts/trellis. Idempotent: a tool already present at the right version is
# skipped. Everything lives outside the checkout, under /var/cache/trellis,
# so a fresh clone (CI) reuses it and a cold machine builds it once.
#
#   bash scripts/install-chart-tools.sh
#
# What is installed, and how:
#
#   helm v3.22.0           built from source with `go install` (the Go module
#                          proxy is reachable; a release tarball is not):
#                          $TRELLIS_TOOLS_BIN/helm (default
#                          /var/cache/trellis/tools/bin/helm). Needs Go
#                          1.26+ (`go` on PATH or /usr/local/go/bin/go).
#                          About 1.5 minutes on 2 cores from nothing; the
#                          module and build caches stay in
#                          /var/cache/trellis/go.
#   kubernetes-validate    PyPI kubernetes-validate==1.37.0 in a virtualenv at
#     1.37.0               $TRELLIS_CHART_VENV (default
#                          /var/cache/trellis/chart-venv). It bundles the
#                          Kubernetes OpenAPI schemas, so it validates offline.
#
# Variables: TRELLIS_CACHE (default /var/cache/trellis), TRELLIS_TOOLS_BIN,
# TRELLIS_CHART_VENV, PYTHON (the interpreter that makes the venv; default
# python3). Prints the path of each tool at the end.
set -euo pipefail

HELM_VERSION=v3.22.0
KV_VERSION=1.37.0

CACHE="${TRELLIS_CACHE:-/var/cache/trellis}"
TOOLS_BIN="${TRELLIS_TOOLS_BIN:-$CACHE/tools/bin}"
VENV="${TRELLIS_CHART_VENV:-$CACHE/chart-venv}"
PYTHON="${PYTHON:-python3}"

say() { printf '[install-chart-tools] %s\n' "$*"; }
die() { printf '[install-chart-tools] error: %s\n' "$*" >&2; exit 1; }

mkdir -p "$TOOLS_BIN"

# --- helm -------------------------------------------------------------------

# A `go install` without the release's -ldflags reports version "v3.22" and
# assumes Kubernetes 1.20 as its default (`helm template` without
# --kube-version, `helm lint` deprecation checks). The release Makefile sets
# both; the same flags are passed here, so this helm behaves like the
# release: version v3.22.0, default Kubernetes 1.37 (helm v3.22.0 is built
# against k8s.io/client-go v0.37.0).
HELM_K8S_MAJOR=1
HELM_K8S_MINOR=37
HELM_LDFLAGS="-w -s"
HELM_LDFLAGS+=" -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
HELM_LDFLAGS+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  HELM_LDFLAGS+=" -X $pkg.k8sVersionMajor=$HELM_K8S_MAJOR -X $pkg.k8sVersionMinor=$HELM_K8S_MINOR"
done

GO=go
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  GO=/usr/local/go/bin/go
fi

helm_bin="$TOOLS_BIN/helm"
# The version the binary reports (set by the -ldflags above).
helm_ident() {
  [ -x "$helm_bin" ] || return 1
  "$helm_bin" version --template '{{.Version}}' 2>/dev/null
}

have=$(helm_ident || true)
if [ "$have" = "$HELM_VERSION" ]; then
  say "present: helm $HELM_VERSION ($helm_bin)"
else
  command -v "$GO" >/dev/null 2>&1 || die "Go is needed to build helm $HELM_VERSION (no 'go' on PATH nor /usr/local/go/bin/go)"
  say "building helm $HELM_VERSION with $("$GO" version | awk '{print $3}') into $TOOLS_BIN (found: ${have:-none}); this takes a minute or two"
  start=$(date +%s)
  # GOTOOLCHAIN=local: helm v3.22.0 needs Go 1.26; an older Go fails here
  # with that message instead of fetching a toolchain.
  GOPATH="$CACHE/go" GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/build-cache" \
  GOBIN="$TOOLS_BIN" GOFLAGS='' GOTOOLCHAIN=local CGO_ENABLED=0 \
    "$GO" install -trimpath -ldflags "$HELM_LDFLAGS" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  have=$(helm_ident || true)
  [ "$have" = "$HELM_VERSION" ] || die "built helm reports version '${have:-?}', expected $HELM_VERSION"
  say "built helm $HELM_VERSION in $(( $(date +%s) - start ))s"
fi

# --- kubernetes-validate ------------------------------------------------------

kv_version() {
  [ -x "$VENV/bin/python" ] || return 1
  "$VENV/bin/python" - <<'EOF' 2>/dev/null
from importlib.metadata import version
print(version("kubernetes-validate"))
EOF
}

have=$(kv_version || true)
if [ "$have" = "$KV_VERSION" ] && [ -x "$VENV/bin/kubernetes-validate" ]; then
  say "present: kubernetes-validate $KV_VERSION ($VENV)"
else
  command -v "$PYTHON" >/dev/null 2>&1 || die "no $PYTHON to make the virtualenv with"
  if [ ! -x "$VENV/bin/python" ]; then
    say "making the virtualenv $VENV"
    if ! "$PYTHON" -m venv "$VENV"; then
      rm -rf "$VENV"
      # Debian's python3 needs python3-venv (ensurepip) for this.
      if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "'$PYTHON -m venv' failed: installing Debian's python3-venv and using /usr/bin/python3"
        apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
        PYTHON=/usr/bin/python3
        "$PYTHON" -m venv "$VENV" || die "'$PYTHON -m venv' failed even with python3-venv installed"
      else
        die "'$PYTHON -m venv' failed; on Debian: apt-get install python3-venv"
      fi
    fi
  fi
  say "installing kubernetes-validate==$KV_VERSION from PyPI into $VENV (found: ${have:-none})"
  start=$(date +%s)
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    "kubernetes-validate==$KV_VERSION"
  have=$(kv_version || true)
  [ "$have" = "$KV_VERSION" ] || die "kubernetes-validate reports '${have:-?}', expected $KV_VERSION"
  say "installed kubernetes-validate $KV_VERSION in $(( $(date +%s) - start ))s"
fi

say "helm:                $helm_bin"
say "kubernetes-validate: $VENV/bin/kubernetes-validate"
