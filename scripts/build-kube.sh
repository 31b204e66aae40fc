#!/usr/bin/env bash
# Builds and caches the real Kubernetes pieces that the integration tier of
# the suite runs against (tests/tests/kube_*.rs): etcd, kube-apiserver,
# kube-controller-manager and kubectl, at pinned versions, from their Go
# modules (the module proxy is reachable; release downloads are not), and
# the Gateway API CRDs from their module. Idempotent: a binary already built
# at the pinned version is reused.
#
#   bash scripts/build-kube.sh            # build what is missing, print paths
#   bash scripts/build-kube.sh --print    # only print the paths (fails if missing)
#
# Where it puts things: $TRELLIS_CACHE/kube (default /var/cache/trellis/kube),
# keyed by version, outside the checkout, so a fresh clone reuses them:
#
#   kube/kubernetes-v1.37.2/bin/{kube-apiserver,kube-controller-manager,kubectl}
#   kube/etcd-v3.6.16/bin/etcd
#   kube/gateway-api-v1.6.3/crds/*.yaml          (config/crd/standard)
#   kube/env                                     the paths, as KEY=value lines
#
# The test harness (tests/src/kube.rs) reads kube/env, or the variables
# below when they are set. To use binaries built elsewhere, point these at
# them and they are used as they are (their version is checked):
#
#   TRELLIS_ETCD, TRELLIS_KUBE_APISERVER, TRELLIS_KUBE_CONTROLLER_MANAGER,
#   TRELLIS_KUBECTL, TRELLIS_GATEWAY_API_CRDS (a directory of CRD files)
#
# Cold on 2 cores: kube-apiserver about 9 minutes, kube-controller-manager
# about 4, kubectl about 2, etcd about 1 (shared Go build cache in
# $TRELLIS_CACHE/go). Warm: a second.
set -euo pipefail

KUBE_VERSION=v1.37.2
# Kubernetes' staging modules (k8s.io/api, client-go, …) are released as
# v0.<minor>.<patch> beside v1.<minor>.<patch>.
STAGING_VERSION="v0.${KUBE_VERSION#v1.}"
ETCD_VERSION=v3.6.16
GATEWAY_API_VERSION=v1.6.3

CACHE="${TRELLIS_CACHE:-/var/cache/trellis}"
KUBE_CACHE="$CACHE/kube"
print_only=false
[ "${1:-}" = "--print" ] && print_only=true

say() { printf '[build-kube] %s\n' "$*" >&2; }
die() { printf '[build-kube] error: %s\n' "$*" >&2; exit 1; }

GO=go
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  GO=/usr/local/go/bin/go
fi

# One module and build cache for every Go tool the project builds (helm too).
export GOPATH="$CACHE/go" GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/build-cache"
# The pinned versions need Go 1.26, which the machine has; fail with that
# message rather than fetching another toolchain.
export GOTOOLCHAIN=local
export CGO_ENABLED=0
export GOFLAGS=-mod=mod

# go_get MODULE@VERSION: fails naming what the module proxy refused.
go_get() {
  local out
  if ! out=$("$GO" get "$1" 2>&1); then
    printf '%s\n' "$out" >&2
    die "go get $1 failed: see the go command's message above (a 403, 'not found' or 'unknown revision' there means the module proxy $("$GO" env GOPROXY) does not serve that module version)"
  fi
}

# version_of BINARY: the version it reports, or nothing.
version_of() {
  case "$(basename "$1")" in
    etcd) "$1" --version 2>/dev/null | awk '/etcd Version:/ {print "v"$3}' ;;
    kubectl) "$1" version --client -o json 2>/dev/null | sed -n 's/.*"gitVersion": *"\([^"]*\)".*/\1/p' | head -1 ;;
    *) "$1" --version 2>/dev/null | awk '{print $2}' ;;
  esac
}

# The -ldflags of Kubernetes' release builds (hack/lib/version.sh). Without
# them the binaries report v0.0.0-master+$Format:%H$ and helm refuses a chart
# with a kubeVersion constraint.
kube_ldflags() {
  local minor="${KUBE_VERSION#v1.}"
  minor="${minor%%.*}"
  local flags="-s -w" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.gitCommit=module-$KUBE_VERSION"
    flags+=" -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  printf '%s' "$flags"
}

kube_src="$KUBE_CACHE/src/kubernetes-$KUBE_VERSION"
kube_bin="$KUBE_CACHE/kubernetes-$KUBE_VERSION/bin"

# A module of our own that requires k8s.io/kubernetes and pins every staging
# module that Kubernetes' go.mod replaces with ./staging/… to its release.
prepare_kube_module() {
  [ -f "$kube_src/go.sum" ] && grep -q "k8s.io/kubernetes $KUBE_VERSION" "$kube_src/go.mod" 2>/dev/null && return
  say "preparing a module that requires k8s.io/kubernetes $KUBE_VERSION (in $kube_src)"
  mkdir -p "$kube_src"
  local upstream
  (cd "$kube_src" && rm -f go.mod go.sum && "$GO" mod init trellis.dev/kube-build >/dev/null 2>&1)
  upstream=$(cd "$kube_src" && "$GO" mod download -json "k8s.io/kubernetes@$KUBE_VERSION" 2>&1) ||
    { printf '%s\n' "$upstream" >&2; die "the Go module proxy refused k8s.io/kubernetes@$KUBE_VERSION"; }
  local dir
  dir=$(printf '%s\n' "$upstream" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  [ -f "$dir/go.mod" ] || die "k8s.io/kubernetes@$KUBE_VERSION downloaded without a go.mod ($dir)"
  {
    echo "replace ("
    sed -n 's|^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*|\t\1 => \1 '"$STAGING_VERSION"'|p' "$dir/go.mod"
    echo ")"
  } >>"$kube_src/go.mod"
  local n
  n=$(grep -c "=> k8s.io/.* $STAGING_VERSION" "$kube_src/go.mod")
  [ "$n" -gt 20 ] || die "found only $n staging replaces in k8s.io/kubernetes@$KUBE_VERSION's go.mod"
  (cd "$kube_src" && go_get "k8s.io/kubernetes@$KUBE_VERSION")
}

# build_kube CMD: go build k8s.io/kubernetes/cmd/CMD into $kube_bin.
build_kube() {
  local cmd="$1" out="$kube_bin/$1"
  if [ -x "$out" ] && [ "$(version_of "$out")" = "$KUBE_VERSION" ]; then
    say "present: $cmd $KUBE_VERSION ($out)"
    return
  fi
  $print_only && die "$cmd $KUBE_VERSION is not built; run: bash scripts/build-kube.sh"
  prepare_kube_module
  mkdir -p "$kube_bin"
  say "building $cmd $KUBE_VERSION (several minutes cold on 2 cores; Go's build cache makes the next one quicker)"
  go_build "$kube_src" "k8s.io/kubernetes/cmd/$cmd" "$(kube_ldflags)" "$out" "$KUBE_VERSION"
}

# go_build MODULE_DIR PACKAGE LDFLAGS OUT VERSION: builds PACKAGE in the
# module at MODULE_DIR into OUT (atomically), checks the version it reports.
go_build() {
  local dir="$1" pkg="$2" ldflags="$3" out="$4" want="$5" start=$SECONDS got
  (cd "$dir" && "$GO" build -trimpath -ldflags "$ldflags" -o "$out.tmp" "$pkg") ||
    die "go build $pkg@$want failed (module $dir)"
  mv "$out.tmp" "$out"
  got=$(version_of "$out")
  [ "$got" = "$want" ] || die "$out reports version '$got', not $want"
  say "built $(basename "$out") $want in $((SECONDS - start)) s"
}

etcd_src="$KUBE_CACHE/src/etcd-$ETCD_VERSION"
etcd_bin="$KUBE_CACHE/etcd-$ETCD_VERSION/bin"

# `go install go.etcd.io/etcd/server/v3@…` is refused (etcd's go.mod has
# replace directives); a module that requires it builds it.
build_etcd() {
  local out="$etcd_bin/etcd"
  if [ -x "$out" ] && [ "$(version_of "$out")" = "$ETCD_VERSION" ]; then
    say "present: etcd $ETCD_VERSION ($out)"
    return
  fi
  $print_only && die "etcd $ETCD_VERSION is not built; run: bash scripts/build-kube.sh"
  say "building etcd $ETCD_VERSION (about a minute cold)"
  mkdir -p "$etcd_src" "$etcd_bin"
  if ! grep -q "go.etcd.io/etcd/server/v3 $ETCD_VERSION" "$etcd_src/go.mod" 2>/dev/null; then
    (cd "$etcd_src" && rm -f go.mod go.sum && "$GO" mod init trellis.dev/etcd-build >/dev/null 2>&1 &&
      go_get "go.etcd.io/etcd/server/v3@$ETCD_VERSION")
  fi
  go_build "$etcd_src" go.etcd.io/etcd/server/v3 "-s -w" "$out" "$ETCD_VERSION"
}

gateway_crds="$KUBE_CACHE/gateway-api-$GATEWAY_API_VERSION/crds"

fetch_gateway_crds() {
  if [ -f "$gateway_crds/gateway.networking.k8s.io_httproutes.yaml" ]; then
    say "present: Gateway API $GATEWAY_API_VERSION CRDs ($gateway_crds)"
    return
  fi
  $print_only && die "the Gateway API $GATEWAY_API_VERSION CRDs are not fetched; run: bash scripts/build-kube.sh"
  say "fetching the Gateway API $GATEWAY_API_VERSION CRDs from the module sigs.k8s.io/gateway-api"
  local out dir
  out=$("$GO" mod download -json "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION" 2>&1) ||
    { printf '%s\n' "$out" >&2; die "the Go module proxy refused sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION"; }
  dir=$(printf '%s\n' "$out" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  [ -d "$dir/config/crd/standard" ] || die "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION has no config/crd/standard"
  mkdir -p "$gateway_crds.tmp"
  cp "$dir"/config/crd/standard/*.yaml "$gateway_crds.tmp/"
  chmod u+w "$gateway_crds.tmp"/*.yaml
  rm -rf "$gateway_crds"
  mv "$gateway_crds.tmp" "$gateway_crds"
}

# use_given VAR VERSION: a binary a variable points at is used as it is.
use_given() {
  local var="$1" want="$2" path="${!1:-}"
  [ -n "$path" ] || return 1
  [ -x "$path" ] || die "$var=$path is not an executable"
  local got
  got=$(version_of "$path")
  [ "$got" = "$want" ] || say "warning: $var=$path reports version '$got'; the suite is pinned to $want"
  say "using $var=$path"
  return 0
}

command -v "$GO" >/dev/null 2>&1 || die "Go 1.26 is needed to build the Kubernetes pieces (no 'go' on PATH nor /usr/local/go/bin/go)"
mkdir -p "$KUBE_CACHE"
started=$SECONDS

use_given TRELLIS_ETCD "$ETCD_VERSION" || { build_etcd; TRELLIS_ETCD="$etcd_bin/etcd"; }
use_given TRELLIS_KUBE_APISERVER "$KUBE_VERSION" || { build_kube kube-apiserver; TRELLIS_KUBE_APISERVER="$kube_bin/kube-apiserver"; }
use_given TRELLIS_KUBE_CONTROLLER_MANAGER "$KUBE_VERSION" ||
  { build_kube kube-controller-manager; TRELLIS_KUBE_CONTROLLER_MANAGER="$kube_bin/kube-controller-manager"; }
use_given TRELLIS_KUBECTL "$KUBE_VERSION" || { build_kube kubectl; TRELLIS_KUBECTL="$kube_bin/kubectl"; }
if [ -n "${TRELLIS_GATEWAY_API_CRDS:-}" ]; then
  [ -d "$TRELLIS_GATEWAY_API_CRDS" ] || die "TRELLIS_GATEWAY_API_CRDS=$TRELLIS_GATEWAY_API_CRDS is not a directory"
else
  fetch_gateway_crds
  TRELLIS_GATEWAY_API_CRDS="$gateway_crds"
fi

env_file="$KUBE_CACHE/env"
cat >"$env_file.tmp" <<EOF
TRELLIS_KUBE_VERSION=$KUBE_VERSION
TRELLIS_ETCD=$TRELLIS_ETCD
TRELLIS_KUBE_APISERVER=$TRELLIS_KUBE_APISERVER
TRELLIS_KUBE_CONTROLLER_MANAGER=$TRELLIS_KUBE_CONTROLLER_MANAGER
TRELLIS_KUBECTL=$TRELLIS_KUBECTL
TRELLIS_GATEWAY_API_CRDS=$TRELLIS_GATEWAY_API_CRDS
EOF
mv "$env_file.tmp" "$env_file"
say "ready in $((SECONDS - started)) s; paths in $env_file:"
cat "$env_file"
