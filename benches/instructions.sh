#!/usr/bin/env bash
# Instructions per call on each layer's admitted path, Trellis beside its
# peer, counted by callgrind (stable on a busy machine, unlike wall clock).
# Usage: benches/instructions.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-200000}
cargo build -q --profile bench -p trellis-benches --example instructions
bin="${CARGO_TARGET_DIR:-target}/release/examples/instructions"
count() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" 2>&1 |
        sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
printf '%-20s %12s\n' case "instr/call"
for case in bulkhead/trellis bulkhead/tower direct/trellis direct/governor direct/governor+state; do
    a=$(count "$case" "$n"); b=$(count "$case" $((2 * n)))
    printf '%-20s %12s\n' "$case" "$(( (b - a) / n ))"
done
