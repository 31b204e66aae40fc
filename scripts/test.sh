#!/usr/bin/env bash
# Runs every Trellis test: unit, in-process component, and the end-to-end
# tests in network namespaces (which need root and iptables).
#
#   sudo scripts/test.sh
#
# It installs what the tests need (scripts/install-deps.sh), builds the
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
mkdir -p "$CARGO_TARGET_DIR"

step "installing test dependencies (scripts/install-deps.sh)"
bash scripts/install-deps.sh

step "building the workspace (cache: $CARGO_TARGET_DIR)"
cargo build --workspace --all-targets --locked

step "checking formatting and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "running every test (unit, component, end-to-end in network namespaces)"
# Network-namespace tests start real processes; two at a time keeps a
# 2-core machine responsive.
cargo test --workspace --locked -- --test-threads=2
