#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer's coverage instrumentation on the stable toolchain
# (the flags cargo-fuzz passes with `--sanitizer none`) and runs each for SECONDS (default 20).
# Usage: fuzz/run.sh [SECONDS] [TARGET...]
# Crashes land in fuzz/artifacts/TARGET and fail the run.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-20}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(packet messages server_session driver_never_reads)
triple=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares \
 -Cdebug-assertions -Coverflow-checks"
cargo build --quiet --release --target "$triple" --target-dir ../target/fuzz --bins
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  # Seeds kept in the repository start each corpus (a flood the never-reading target must
  # survive, for one).
  if [ -d "seeds/$t" ]; then cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null || true; fi
  echo "fuzz: $t for ${seconds}s"
  "../target/fuzz/$triple/release/$t" -max_total_time="$seconds" -print_final_stats=1 \
    -artifact_prefix="artifacts/$t/" "corpus/$t" 2>&1 \
    | grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|==|SUMMARY|panicked|thread)' || true
  # libFuzzer exits non-zero on a crash; grep above hides that, so check the artifacts.
  if compgen -G "artifacts/$t/*" >/dev/null; then
    echo "fuzz: $t found a crash: $(ls artifacts/"$t")" >&2
    exit 1
  fi
done
