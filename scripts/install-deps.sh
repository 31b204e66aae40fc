#!/usr/bin/env bash
# Installs the Debian packages that the Trellis demo and test suite use, then
# checks that every tool runs. Debian 12 (bookworm), as root. Idempotent:
# packages already installed are skipped, and `apt-get update` runs only when
# something must be installed.
#
#   sudo scripts/install-deps.sh           everything the test suite uses
#   sudo scripts/install-deps.sh --demo    only what `trellis demo` needs
#                                          (scripts/demo.sh): the first three
#
# What is installed, and why:
#
#   iptables          the proxy's traffic-capture rules (`trellis-proxy init`)
#   iproute2          `ip netns`, veth and bridge: the local mesh's pods
#   util-linux        `setpriv`: runs the proxy as uid 7102 in a pod
#   --- the rest only for tests ---
#   curl              HTTP/1.1 requests in end-to-end tests
#   nghttp2-client    `nghttp` (h2c requests) and `h2load` (HTTP/2 load)
#   prometheus        only for `promtool check metrics` on /metrics output
#                     (the server itself is not started: see below)
#   openssl           inspecting certificates in tests
#   python3-grpcio    a real gRPC server and client (scripts/grpc_echo.py)
#   python3-websockets  a WebSocket client independent of the Rust one
#   python3-yaml      PyYAML, a YAML 1.1 reader like Kubernetes': tests read
#                     `trellis inject` output back with it (strings stay strings)
#
# Python: Debian's python3-grpcio (1.51) and python3-websockets are built for
# Debian's interpreter, /usr/bin/python3 (3.11). On machines where `python3`
# on PATH is another interpreter (a pyenv shim, say), those modules are not
# importable from it, so tests call /usr/bin/python3 explicitly (and
# scripts/grpc_echo.py re-runs itself under /usr/bin/python3 when started by
# an interpreter without grpc). No pip install is needed.
#
# Rust is not installed here: the toolchain pinned in rust-toolchain.toml must
# already be present (rustup installs the pinned version on first use).
set -euo pipefail

# The interpreter that has Debian's grpc and websockets modules.
TRELLIS_PYTHON=/usr/bin/python3

say() { printf '[install-deps] %s\n' "$*"; }
die() { printf '[install-deps] error: %s\n' "$*" >&2; exit 1; }

demo_only=false
case "${1:-}" in
  "") ;;
  --demo) demo_only=true ;;
  -h | --help)
    sed -n '2,12p' "$0"
    exit 0
    ;;
  *) die "unknown argument: $1 (expected --demo or nothing)" ;;
esac

# What the local mesh and `trellis demo` need (its workloads are `trellis app`
# servers and clients: no other tools).
demo_packages=(
  iptables
  iproute2
  util-linux
)
# What the test suite needs besides.
test_packages=(
  curl
  nghttp2-client
  prometheus
  openssl
  python3
  python3-grpcio
  python3-websockets
  python3-yaml
)
packages=("${demo_packages[@]}")
if ! $demo_only; then
  packages+=("${test_packages[@]}")
fi

installed() {
  [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

if ! command -v dpkg-query >/dev/null || ! command -v apt-get >/dev/null; then
  die "this script needs a Debian system (dpkg and apt-get were not found)"
fi

missing=()
for p in "${packages[@]}"; do
  if installed "$p"; then
    say "present: $p"
  else
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "must run as root to install: ${missing[*]}"
  say "installing: ${missing[*]}"
  # Keep installed services (the prometheus server) from being started:
  # only promtool is wanted. A policy-rc.d already present is left alone.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# Temporary, from Trellis scripts/install-deps.sh: start no services.\nexit 101\n' \
      >/usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  say "apt-get update"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  say "apt-get install ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  say "every package is present; nothing to install"
fi

# Every tool must run. Each check prints one line of version.
failures=0
summary=()
check() {
  local name=$1
  shift
  local out
  if out=$("$@" 2>&1) && [ -n "$out" ]; then
    summary+=("$(printf '  %-18s %s' "$name" "${out%%$'\n'*}")")
  else
    summary+=("$(printf '  %-18s FAILED (%s): %s' "$name" "$*" "${out%%$'\n'*}")")
    failures=$((failures + 1))
  fi
}
check iptables iptables --version
check ip ip -V
check setpriv setpriv --version
if ! $demo_only; then
check curl curl --version
check nghttp nghttp --version
check h2load h2load --version
check promtool promtool --version
check openssl openssl version
check python3-grpcio "$TRELLIS_PYTHON" -c 'import grpc, sys; print("grpc", grpc.__version__, "on python", sys.version.split()[0], "at", sys.executable)'
check python3-websockets "$TRELLIS_PYTHON" -c 'import websockets; print("websockets", websockets.__version__)'
check python3-yaml "$TRELLIS_PYTHON" -c 'import yaml; print("PyYAML", yaml.__version__)'
fi

# Rust: present, never installed from here.
cargo_bin=$(command -v cargo || true)
if [ -z "$cargo_bin" ] && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
  cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin/cargo"
fi
if [ -n "$cargo_bin" ]; then
  # Run from the checkout so rust-toolchain.toml selects the pinned toolchain.
  root=$(cd "$(dirname "$0")/.." && pwd)
  check cargo sh -c "cd '$root' && '$cargo_bin' --version"
  check rustc sh -c "cd '$root' && '$(dirname "$cargo_bin")/rustc' --version"
  if command -v rustup >/dev/null; then
    check rustup sh -c 'rustup --version 2>/dev/null'
  fi
else
  summary+=("$(printf '  %-18s FAILED: %s' cargo "no Rust toolchain found; install rustup, then the version in rust-toolchain.toml")")
  failures=$((failures + 1))
fi

say "summary:"
printf '%s\n' "${summary[@]}"
if [ "$failures" -gt 0 ]; then
  die "$failures tool(s) missing or broken (see above)"
fi
if $demo_only; then
  say "all tools the demo needs are present (the test suite needs more: run without --demo)"
else
  say "all tools present (python for gRPC/WebSocket tests: $TRELLIS_PYTHON)"
fi
