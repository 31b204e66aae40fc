#!/usr/bin/env bash
# Runs every Trellis test: unit, in-process component, and the end-to-end
# tests in network namespaces (which need root and iptables).
#
#   sudo scripts/test.sh
#
# It installs what the tests need (scripts/install-deps.sh, and helm and
# kubernetes-validate via scripts/install-chart-tools.sh), builds the real
# Kubernetes pieces the integration tier runs (scripts/build-kube.sh), the CNI
# plugins (scripts/build-cni.sh) and Jaeger (scripts/build-jaeger.sh), builds the
# workspace, checks formatting and lints, then runs `cargo test` over the
# whole workspace. Builds are cached outside the checkout, in
# $CARGO_TARGET_DIR (default /var/cache/trellis/target).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

if [ "$(id -u)" != 0 ]; then
  echo "scripts/test.sh: the suite includes tests in network namespaces with iptables; run it as root" >&2
  exit 1
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/trellis/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# A test run builds once; incremental state would only fill the cache's disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
mkdir -p "$CARGO_TARGET_DIR"

step "installing test dependencies (scripts/install-deps.sh)"
bash scripts/install-deps.sh

step "installing the chart tools: helm, kubernetes-validate (scripts/install-chart-tools.sh)"
bash scripts/install-chart-tools.sh

step "building the Kubernetes pieces of the integration tier (scripts/build-kube.sh)"
# etcd, kube-apiserver, kube-controller-manager and kubectl from their Go
# modules at pinned versions, cached under /var/cache/trellis/kube: about
# 13 minutes on a cold 2-core machine, a second when cached.
bash scripts/build-kube.sh

step "building the CNI plugins and cnitool of the CNI tier (scripts/build-cni.sh)"
# bridge, host-local, loopback and cnitool from their Go modules, cached
# under /var/cache/trellis/cni: about 20 seconds cold, instant when cached.
bash scripts/build-cni.sh

step "building Jaeger for the tracing tier (scripts/build-jaeger.sh)"
# The all-in-one `jaeger` (OTLP receiver, in-memory storage, query API)
# from its Go module, cached under /var/cache/trellis/jaeger: about 12
# minutes on a cold 2-core machine, a second when cached.
bash scripts/build-jaeger.sh

step "building the workspace (cache: $CARGO_TARGET_DIR)"
cargo build --workspace --all-targets --locked

step "checking formatting and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "checking the Helm chart and what the injector writes against the Kubernetes schema"
# Every injected pod of the injector's golden cases, and what `trellis
# inject` prints for each manifest case (every workload kind, the YAML 1.1
# traps, JSON in), validated in strict mode beside the chart's own
# manifests (read by PyYAML, a YAML 1.1 reader as Kubernetes' is).
injected_dir="$(mktemp -d)"
trap 'rm -rf "$injected_dir"' EXIT
for case in injector/testdata/inject/*/; do
  name="$(basename "$case")"
  if [ -f "$case/injected.yaml" ]; then
    cp "$case/injected.yaml" "$injected_dir/pod-$name.yaml"
  elif [ -f "$case/expected.yaml" ]; then
    "$CARGO_TARGET_DIR/debug/trellis" inject -f "$case/input.yaml" >"$injected_dir/manifest-$name.yaml"
  elif [ -f "$case/input.json" ]; then
    # JSON in, JSON out (one JSON document: valid YAML for the validator).
    "$CARGO_TARGET_DIR/debug/trellis" inject -f "$case/input.json" >"$injected_dir/manifest-$name.yaml"
  fi
done
bash scripts/check-chart.sh --validate-dir "$injected_dir"

step "running every test (unit, component, a real kube-apiserver, end-to-end in network namespaces)"
# Network-namespace tests start real processes; two at a time keeps a
# 2-core machine responsive.
cargo test --workspace --locked -- --test-threads=2
