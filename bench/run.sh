#!/usr/bin/env bash
# Runs the whole side-by-side comparison and rewrites BENCHMARKS.md and bench/results.json.
# Extra arguments go to burrow-bench (e.g. --devices 1000 --devices 50000 --seconds 10).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p burrow -p burrow-bench
BURROW_BENCH_COMMAND="./bench/run.sh${*:+ $*}" ./target/release/burrow-bench --out bench "$@"
mv bench/BENCHMARKS.md BENCHMARKS.md
