#!/usr/bin/env bash
# Builds and caches a real Jaeger (the all-in-one `jaeger` program: an OTLP
# receiver, in-memory storage and the query HTTP API) that the tracing tier
# of the suite exports spans to and reads them back from
# (tests/tests/netns_tracing.rs). Built from its Go module at a pinned
# version (the module proxy is reachable; release downloads are not).
# Idempotent: a binary already built at the pinned version is reused.
#
#   bash scripts/build-jaeger.sh            # build if missing, print the path
#   bash scripts/build-jaeger.sh --print    # only print the path (fails if missing)
#
# Where it puts things: $TRELLIS_CACHE/jaeger (default
# /var/cache/trellis/jaeger), keyed by version, outside the checkout:
#
#   jaeger/jaeger-v1.75.0/bin/jaeger
#   jaeger/env                           the path, as KEY=value lines
#
# The test reads jaeger/env, or TRELLIS_JAEGER when it is set (a binary built
# elsewhere, used as it is; its version is checked).
#
# Cold on 2 cores: about 12 minutes (719 s measured, modules downloaded;
# shared Go build cache in $TRELLIS_CACHE/go). Warm: a second.
set -euo pipefail

JAEGER_VERSION=v1.75.0

CACHE="${TRELLIS_CACHE:-/var/cache/trellis}"
JAEGER_CACHE="$CACHE/jaeger"
print_only=false
[ "${1:-}" = "--print" ] && print_only=true

say() { printf '[build-jaeger] %s\n' "$*" >&2; }
die() { printf '[build-jaeger] error: %s\n' "$*" >&2; exit 1; }

GO=go
if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
  GO=/usr/local/go/bin/go
fi
# The same module and build cache as scripts/build-kube.sh.
export GOPATH="$CACHE/go" GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/build-cache"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod

src="$JAEGER_CACHE/src/jaeger-$JAEGER_VERSION"
bin="$JAEGER_CACHE/jaeger-$JAEGER_VERSION/bin"

# version_of BINARY: the version `jaeger version` reports, or nothing.
version_of() { "$1" version 2>/dev/null | sed -n 's/.*"gitVersion": *"\([^"]*\)".*/\1/p' | head -1; }

go_get() {
  local out
  if ! out=$("$GO" get "$1" 2>&1); then
    printf '%s\n' "$out" >&2
    die "go get $1 failed: see the go command's message above (a 403, 'not found' or 'unknown revision' there means the module proxy $("$GO" env GOPROXY) does not serve that module version)"
  fi
}

# `go install github.com/jaegertracing/jaeger/cmd/jaeger@…` is refused
# (Jaeger's go.mod has a replace directive); a module of our own that
# requires it, with the same replace, builds it.
prepare_module() {
  grep -q "github.com/jaegertracing/jaeger $JAEGER_VERSION" "$src/go.mod" 2>/dev/null && [ -f "$src/go.sum" ] && return
  say "preparing a module that requires github.com/jaegertracing/jaeger $JAEGER_VERSION (in $src)"
  mkdir -p "$src"
  local out dir
  (cd "$src" && rm -f go.mod go.sum && "$GO" mod init trellis.dev/jaeger-build >/dev/null 2>&1)
  out=$(cd "$src" && "$GO" mod download -json "github.com/jaegertracing/jaeger@$JAEGER_VERSION" 2>&1) ||
    { printf '%s\n' "$out" >&2; die "the Go module proxy refused github.com/jaegertracing/jaeger@$JAEGER_VERSION"; }
  dir=$(printf '%s\n' "$out" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  [ -f "$dir/go.mod" ] || die "github.com/jaegertracing/jaeger@$JAEGER_VERSION downloaded without a go.mod ($dir)"
  grep '^replace ' "$dir/go.mod" >>"$src/go.mod" || true
  (cd "$src" && go_get "github.com/jaegertracing/jaeger@$JAEGER_VERSION")
}

command -v "$GO" >/dev/null 2>&1 || die "Go 1.26 is needed to build Jaeger (no 'go' on PATH nor /usr/local/go/bin/go)"
started=$SECONDS

if [ -n "${TRELLIS_JAEGER:-}" ]; then
  [ -x "$TRELLIS_JAEGER" ] || die "TRELLIS_JAEGER=$TRELLIS_JAEGER is not an executable"
  got=$(version_of "$TRELLIS_JAEGER")
  [ "$got" = "$JAEGER_VERSION" ] || say "warning: TRELLIS_JAEGER=$TRELLIS_JAEGER reports version '$got'; the suite is pinned to $JAEGER_VERSION"
  say "using TRELLIS_JAEGER=$TRELLIS_JAEGER"
elif [ -x "$bin/jaeger" ] && [ "$(version_of "$bin/jaeger")" = "$JAEGER_VERSION" ]; then
  say "present: jaeger $JAEGER_VERSION ($bin/jaeger)"
  TRELLIS_JAEGER="$bin/jaeger"
else
  $print_only && die "jaeger $JAEGER_VERSION is not built; run: bash scripts/build-jaeger.sh"
  prepare_module
  mkdir -p "$bin"
  say "building jaeger $JAEGER_VERSION (several minutes cold on 2 cores)"
  start=$SECONDS
  pkg=github.com/jaegertracing/jaeger/internal/version
  (cd "$src" && "$GO" build -trimpath \
    -ldflags "-s -w -X $pkg.latestVersion=$JAEGER_VERSION -X $pkg.commitSHA=module-$JAEGER_VERSION -X $pkg.date=1970-01-01T00:00:00Z" \
    -o "$bin/jaeger.tmp" github.com/jaegertracing/jaeger/cmd/jaeger) ||
    die "go build of jaeger $JAEGER_VERSION failed (module $src)"
  mv "$bin/jaeger.tmp" "$bin/jaeger"
  got=$(version_of "$bin/jaeger")
  [ "$got" = "$JAEGER_VERSION" ] || die "$bin/jaeger reports version '$got', not $JAEGER_VERSION"
  say "built jaeger $JAEGER_VERSION in $((SECONDS - start)) s"
  TRELLIS_JAEGER="$bin/jaeger"
fi

mkdir -p "$JAEGER_CACHE"
env_file="$JAEGER_CACHE/env"
cat >"$env_file.tmp" <<ENV
TRELLIS_JAEGER_VERSION=$JAEGER_VERSION
TRELLIS_JAEGER=$TRELLIS_JAEGER
ENV
mv "$env_file.tmp" "$env_file"
say "ready in $((SECONDS - started)) s; paths in $env_file:"
cat "$env_file"
