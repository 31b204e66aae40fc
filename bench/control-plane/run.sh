#!/usr/bin/env bash
# The control-plane benchmark (issue 18): builds trellis-controller (release,
# as it ships) and the bench, then runs the file source at 1/10 and full
# scale and the Kubernetes source at 1/10 (and full scale with --full-kube).
#
#   bench/control-plane/run.sh [--controller-bin PATH | --controller-profile release|demo] [--out DIR] [--churn-secs N] [--full-kube] [--only SOURCE:SCALE ...]
#
# --controller-bin: measure this binary instead of building one (e.g. an
# older or newer controller); the results name it.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/trellis/target-cpbench}"
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

controller=""
profile=release
out="bench/control-plane/results"
churn=60
full_kube=0
only=()
while [ $# -gt 0 ]; do
  case "$1" in
    --controller-bin) controller="$2"; shift 2 ;;
    --controller-profile) profile="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --churn-secs) churn="$2"; shift 2 ;;
    --full-kube) full_kube=1; shift ;;
    --only) only+=("$2"); shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

if [ -z "$controller" ]; then
  echo "[run] building trellis-controller (profile $profile; release is fat LTO, slow when cold)"
  cargo build --profile "$profile" -p trellis-controller
  dir="$profile"; [ "$profile" = dev ] && dir=debug
  controller="$CARGO_TARGET_DIR/$dir/trellis-controller"
fi
# The bench itself: the demo profile (opt-level 3, no LTO) builds in a
# fraction of release's time; it is the load client, not what is measured.
echo "[run] building the bench"
cargo build --profile demo -p trellis-bench-control-plane
bench="$CARGO_TARGET_DIR/demo/trellis-bench-control-plane"

ulimit -n "$(ulimit -Hn)" || true
work="${TMPDIR:-/tmp}/trellis-cpbench"
mkdir -p "$out" "$work"

runs=("file:0.1" "kubernetes:0.1" "file:1")
[ "$full_kube" = 1 ] && runs+=("kubernetes:1")
[ ${#only[@]} -gt 0 ] && runs=("${only[@]}")
for r in "${runs[@]}"; do
  source="${r%%:*}" scale="${r##*:}"
  echo "[run] === $source at scale $scale ==="
  # The objects file and the controller's log go to $work (large); the
  # result JSON is copied into $out.
  "$bench" --source "$source" --scale "$scale" --controller-bin "$controller" \
    --out "$work" --churn-secs "$churn"
  cp "$work/$source-$scale.json" "$out/"
done
"$bench" --report --out "$out" --source - --controller-bin - 
