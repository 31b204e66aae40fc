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

echo "==> installing what the local mesh needs (scripts/install-deps.sh)"
bash scripts/install-deps.sh
echo "==> building trellis, trellis-proxy, trellis-identity and trellis-controller (release; cache: $CARGO_TARGET_DIR)"
cargo build --release --locked -p trellis-cli -p trellis-proxy -p trellis-identity -p trellis-controller
echo "==> starting the demo"
exec "$CARGO_TARGET_DIR/release/trellis" demo "$@"
