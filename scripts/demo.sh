#!/usr/bin/env bash
# Runs the Trellis demo: a local mesh on this host (network namespaces as
# pods, the real proxy and capture rules), traffic through it, and a live
# table of golden metrics. Ctrl-C removes everything it made.
#
#   sudo scripts/demo.sh [--duration 60s]
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "scripts/demo.sh: the local mesh creates network namespaces and iptables rules; run it as root" >&2
  exit 1
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/trellis/target}"

# The `demo` profile (Cargo.toml): release's optimisation without fat LTO, a
# fraction of release's cold build time. Benchmarks build `release`.
PROFILE=demo

echo "==> installing what the local mesh needs (scripts/install-deps.sh --demo)"
bash scripts/install-deps.sh --demo
echo "==> building trellis, trellis-app, trellis-proxy, trellis-identity and trellis-controller (profile $PROFILE; cache: $CARGO_TARGET_DIR)"
cargo build --profile "$PROFILE" --locked -p trellis-cli -p trellis-app -p trellis-proxy -p trellis-identity -p trellis-controller
echo "==> starting the demo"
exec "$CARGO_TARGET_DIR/$PROFILE/trellis" demo "$@"
