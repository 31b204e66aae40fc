#!/usr/bin/env bash
# Builds and caches the real CNI pieces that the CNI tier of the suite runs
# (tests/tests/netns_cni.rs): the reference plugins `bridge`, `host-local`
# and `loopback`, and `cnitool`, which runs a network configuration list the
# way a container runtime does. Built from their Go modules at pinned
# versions (the module proxy is reachable; release downloads are not).
# Idempotent: what is already built at the pinned version is reused.
#
#   bash scripts/build-cni.sh            # build what is missing, print paths
#   bash scripts/build-cni.sh --print    # only print the paths (fails if missing)
#
# Where it puts things: $TRELLIS_CACHE/cni (default /var/cache/trellis/cni),
# keyed by version, outside the checkout:
#
#   cni/plugins-v1.10.0/bin/{bridge,host-local,loopback}
#   cni/cni-v1.3.1/bin/cnitool
#   cni/env                              the paths, as KEY=value lines
#
# The tests read cni/env, or TRELLIS_CNI_PLUGINS_DIR (a directory holding the
# three plugins) and TRELLIS_CNITOOL when they are set.
#
# Cold on 2 cores: about 20 seconds with a warm Go module cache. Warm: instant.
set -euo pipefail

PLUGINS_VERSION=v1.10.0
CNI_VERSION=v1.3.1
PLUGINS=(main/bridge ipam/host-local main/loopback)

CACHE="${TRELLIS_CACHE:-/var/cache/trellis}"
CNI_CACHE="$CACHE/cni"
print_only=false
[ "${1:-}" = "--print" ] && print_only=true

say() { printf '[build-cni] %s\n' "$*" >&2; }
die() { printf '[build-cni] error: %s\n' "$*" >&2; exit 1; }

GO=go
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  GO=/usr/local/go/bin/go
fi
# The same module and build cache as scripts/build-kube.sh.
export GOPATH="$CACHE/go" GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/build-cache"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod

plugins_bin="$CNI_CACHE/plugins-$PLUGINS_VERSION/bin"
cni_bin="$CNI_CACHE/cni-$CNI_VERSION/bin"
src="$CNI_CACHE/src/cni-build-$PLUGINS_VERSION-$CNI_VERSION"

# plugin_version BINARY: what a plugin reports when run without CNI_COMMAND
# ("CNI bridge plugin v1.10.0").
plugin_version() { env -i "$1" 2>&1 | awk 'NR == 1 {print $NF}'; }

plugins_present() {
  local p
  for p in "${PLUGINS[@]}"; do
    [ -x "$plugins_bin/${p#*/}" ] && [ "$(plugin_version "$plugins_bin/${p#*/}")" = "$PLUGINS_VERSION" ] || return 1
  done
}
# cnitool reports no version: a stamp beside it says which module built it.
cnitool_present() { [ -x "$cni_bin/cnitool" ] && [ "$(cat "$cni_bin/.version" 2>/dev/null)" = "$CNI_VERSION" ]; }

go_get() {
  local out
  if ! out=$("$GO" get "$1" 2>&1); then
    printf '%s\n' "$out" >&2
    die "go get $1 failed: see the go command's message above (a 403, 'not found' or 'unknown revision' there means the module proxy $("$GO" env GOPROXY) does not serve that module version)"
  fi
}

prepare_module() {
  grep -q "containernetworking/plugins $PLUGINS_VERSION" "$src/go.mod" 2>/dev/null &&
    grep -q "containernetworking/cni $CNI_VERSION" "$src/go.mod" 2>/dev/null && return
  say "preparing a module that requires the CNI plugins $PLUGINS_VERSION and cni $CNI_VERSION (in $src)"
  mkdir -p "$src"
  (cd "$src" && rm -f go.mod go.sum && "$GO" mod init trellis.dev/cni-build >/dev/null 2>&1 &&
    go_get "github.com/containernetworking/plugins@$PLUGINS_VERSION" &&
    go_get "github.com/containernetworking/cni@$CNI_VERSION")
}

command -v "$GO" >/dev/null 2>&1 || die "Go 1.26 is needed to build the CNI plugins (no 'go' on PATH nor /usr/local/go/bin/go)"
started=$SECONDS

if [ -n "${TRELLIS_CNI_PLUGINS_DIR:-}" ]; then
  for p in "${PLUGINS[@]}"; do
    [ -x "$TRELLIS_CNI_PLUGINS_DIR/${p#*/}" ] || die "TRELLIS_CNI_PLUGINS_DIR=$TRELLIS_CNI_PLUGINS_DIR has no executable ${p#*/}"
  done
  say "using TRELLIS_CNI_PLUGINS_DIR=$TRELLIS_CNI_PLUGINS_DIR"
elif plugins_present; then
  say "present: CNI plugins $PLUGINS_VERSION ($plugins_bin)"
  TRELLIS_CNI_PLUGINS_DIR="$plugins_bin"
else
  $print_only && die "the CNI plugins $PLUGINS_VERSION are not built; run: bash scripts/build-cni.sh"
  prepare_module
  mkdir -p "$plugins_bin"
  for p in "${PLUGINS[@]}"; do
    name="${p#*/}" start=$SECONDS
    say "building $name $PLUGINS_VERSION"
    (cd "$src" && "$GO" build -trimpath \
      -ldflags "-s -w -X github.com/containernetworking/plugins/pkg/utils/buildversion.BuildVersion=$PLUGINS_VERSION" \
      -o "$plugins_bin/$name.tmp" "github.com/containernetworking/plugins/plugins/$p") ||
      die "go build of the $name plugin $PLUGINS_VERSION failed"
    mv "$plugins_bin/$name.tmp" "$plugins_bin/$name"
    got=$(plugin_version "$plugins_bin/$name")
    [ "$got" = "$PLUGINS_VERSION" ] || die "$plugins_bin/$name reports version '$got', not $PLUGINS_VERSION"
    say "built $name in $((SECONDS - start)) s"
  done
  TRELLIS_CNI_PLUGINS_DIR="$plugins_bin"
fi

if [ -n "${TRELLIS_CNITOOL:-}" ]; then
  [ -x "$TRELLIS_CNITOOL" ] || die "TRELLIS_CNITOOL=$TRELLIS_CNITOOL is not an executable"
  say "using TRELLIS_CNITOOL=$TRELLIS_CNITOOL"
elif cnitool_present; then
  say "present: cnitool $CNI_VERSION ($cni_bin/cnitool)"
  TRELLIS_CNITOOL="$cni_bin/cnitool"
else
  $print_only && die "cnitool $CNI_VERSION is not built; run: bash scripts/build-cni.sh"
  prepare_module
  mkdir -p "$cni_bin"
  start=$SECONDS
  say "building cnitool $CNI_VERSION"
  (cd "$src" && "$GO" build -trimpath -ldflags "-s -w" -o "$cni_bin/cnitool.tmp" github.com/containernetworking/cni/cnitool) ||
    die "go build of cnitool $CNI_VERSION failed"
  mv "$cni_bin/cnitool.tmp" "$cni_bin/cnitool"
  echo "$CNI_VERSION" >"$cni_bin/.version"
  say "built cnitool in $((SECONDS - start)) s"
  TRELLIS_CNITOOL="$cni_bin/cnitool"
fi

mkdir -p "$CNI_CACHE"
env_file="$CNI_CACHE/env"
cat >"$env_file.tmp" <<EOF
TRELLIS_CNI_PLUGINS_VERSION=$PLUGINS_VERSION
TRELLIS_CNI_PLUGINS_DIR=$TRELLIS_CNI_PLUGINS_DIR
TRELLIS_CNITOOL=$TRELLIS_CNITOOL
EOF
mv "$env_file.tmp" "$env_file"
say "ready in $((SECONDS - started)) s; paths in $env_file:"
cat "$env_file"
