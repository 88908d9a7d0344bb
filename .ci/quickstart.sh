#!/usr/bin/env bash
# Runs the README's quick-start command exactly as the README writes it (with --check appended so
# that it ends), so a quick start that fails in a fresh clone fails CI too.
set -euo pipefail
cd "$(dirname "$0")/.."
cmd=$(awk '/^## Quick start/ {q = 1} q && /^```/ {if (c) exit; c = 1; next} c {print; exit}' README.md \
  | sed 's/[[:space:]]*#.*$//')
case "$cmd" in
  *" demo") ;;
  *) echo "quickstart: the README's first quick-start command is '$cmd', not a demo command" >&2; exit 1 ;;
esac
echo "quickstart: $cmd --check"
# The release profile's fat LTO is for shipped binaries; a thin build resolves and runs the same
# binary with the same command text in a fraction of the time.
CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 bash -c "$cmd --check"
