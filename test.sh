#!/usr/bin/env bash
# Installs what the tests need on a fresh Debian machine, then runs every test.
set -euo pipefail
cd "$(dirname "$0")"

sudo_if_needed() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Interop tests run the real OpenSSH client and server.
need=()
command -v ssh >/dev/null 2>&1 || need+=(openssh-client)
command -v ssh-keygen >/dev/null 2>&1 || need+=(openssh-client)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
# PuTTY's plink logs in by password as PuTTY and TeraTerm users do, and jumps with -nc.
command -v plink >/dev/null 2>&1 || need+=(putty-tools)
# dropbear's client (device and operator) and server (the agent against it).
{ command -v dbclient >/dev/null 2>&1 && [ -x /usr/sbin/dropbear ]; } || need+=(dropbear-bin)
# The cluster tests start throwaway PostgreSQL servers (initdb and postgres from Debian's package).
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
# The package tests verify the systemd units; the https metadata test makes its CA with openssl.
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v dpkg-deb >/dev/null 2>&1 || need+=(dpkg)
# libFuzzer (built by the fuzz targets) is C++.
command -v g++ >/dev/null 2>&1 || need+=(g++)
# The bench smoke run counts idle bytes on a veth between network namespaces (ip, ss).
{ command -v ip >/dev/null 2>&1 && command -v ss >/dev/null 2>&1; } || need+=(iproute2)
# Console tests: XMODEM/YMODEM file transfer with lrzsz's sz/rz, USB hotplug with socat ptys.
command -v sz >/dev/null 2>&1 || need+=(lrzsz)
command -v socat >/dev/null 2>&1 || need+=(socat)
# The web console's tests drive a real headless Chromium through its WebDriver.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  echo "test.sh: installing ${need[*]}"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# Python clients the tests drive: pyserial's RFC 2217 client (consoles), paramiko (a third
# SSH implementation), asyncssh (a fourth, which sends RFC 4335 breaks with a length),
# ssh-audit (the relay's algorithms), prometheus-client (its text-format parser reads the
# metrics page).
pip_install() {
  python3 -m pip install --quiet "$@" 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages "$@" 2>/dev/null
}
python3 -c 'import serial' >/dev/null 2>&1 || { echo "test.sh: installing pyserial"; pip_install pyserial \
  || { sudo_if_needed apt-get update -qq && sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-serial; }; }
python3 -c 'import paramiko' >/dev/null 2>&1 || { echo "test.sh: installing paramiko"; pip_install paramiko; }
python3 -c 'import prometheus_client' >/dev/null 2>&1 || { echo "test.sh: installing prometheus-client"; pip_install prometheus-client; }
python3 -c 'import ssh_audit' >/dev/null 2>&1 || { echo "test.sh: installing ssh-audit"; pip_install ssh-audit; }
python3 -c 'import asyncssh' >/dev/null 2>&1 || { echo "test.sh: installing asyncssh"; pip_install asyncssh; }
# Selenium drives Chromium for the web console's browser tests (crates/burrow/tests/web/).
python3 -c 'import selenium' >/dev/null 2>&1 || { echo "test.sh: installing selenium"; pip_install selenium; }
# asyncssh is the third-party mlkem768x25519-sha256 peer; it needs a `cryptography` with ML-KEM.
python3 -W ignore -c 'from asyncssh.crypto import mlkem_available; assert mlkem_available' >/dev/null 2>&1 \
  || { echo "test.sh: upgrading asyncssh and cryptography (ML-KEM)"; pip_install --upgrade asyncssh cryptography; }
# sshd refuses to start without its privilege separation directory.
[ -d /run/sshd ] || sudo_if_needed mkdir -p /run/sshd

# No build artifact may be tracked: a file that matches .gitignore and is in the index fails
# the run (fuzz/target was once committed, 691 files).
if tracked_ignored=$(git ls-files -ci --exclude-standard 2>/dev/null) && [ -n "$tracked_ignored" ]; then
  echo "test.sh: tracked files match .gitignore (git rm --cached them):" >&2
  echo "$tracked_ignored" | head -20 >&2
  exit 1
fi

# A run from a fresh clone gains nothing from incremental compilation state, which is as big
# again as the build itself; CI disks are small.
export CARGO_INCREMENTAL=0

cargo fmt --all -- --check
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
cargo clippy --workspace --all-targets -- -D warnings

# The README's first quick-start command, exactly as written (it once failed in a fresh clone).
./.ci/quickstart.sh

# The benchmark harness in smoke mode (tiny sizes, debug build), so that it does not rot.
cargo build -p burrow -p burrow-bench
smoke_out=$(mktemp -d)
./target/debug/burrow-bench --smoke --out "$smoke_out"
rm -rf "$smoke_out"

# The SSH layer's fuzz targets, a bounded run (20 s each); a crash fails the run.
./fuzz/run.sh 20

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
