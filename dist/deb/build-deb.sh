#!/usr/bin/env bash
# Builds target/debian/burrow_VERSION-1_ARCH.deb: the burrow binary, the systemd units for the
# agent and the relay, example configs, a udev rule keeping ModemManager off console adapters,
# and maintainer scripts that create the burrow system user.
#
#   dist/deb/build-deb.sh                                          # this machine's architecture
#   dist/deb/build-deb.sh --target aarch64-unknown-linux-gnu       # Raspberry Pi OS 64-bit (arm64)
#   dist/deb/build-deb.sh --target armv7-unknown-linux-gnueabihf   # Raspberry Pi OS 32-bit (armhf)
#   dist/deb/build-deb.sh --binary PATH [--arch ARCH]              # package a binary built elsewhere
#   --out DIR puts the .deb elsewhere; --compression xz|gzip|none (default xz).
#   The path of the .deb is printed last.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
target='' binary='' arch='' out="$root/target/debian" compression=xz
while [ $# -gt 0 ]; do
  case "$1" in
    --target) target=${2:?--target needs a Rust target triple}; shift 2 ;;
    --binary) binary=${2:?--binary needs a path}; shift 2 ;;
    --arch) arch=${2:?--arch needs a Debian architecture}; shift 2 ;;
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    --compression) compression=${2:?--compression needs xz, gzip or none}; shift 2 ;;
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "build-deb.sh: unknown argument $1 (see --help)" >&2; exit 64 ;;
  esac
done

deb_arch_of() {
  case "$1" in
    x86_64-*) echo amd64 ;;
    aarch64-*) echo arm64 ;;
    armv7-*hf | arm-*hf) echo armhf ;;
    i686-*) echo i386 ;;
    riscv64*) echo riscv64 ;;
    *) echo "build-deb.sh: no Debian architecture known for target $1; pass --arch" >&2; exit 64 ;;
  esac
}

if [ -z "$binary" ]; then
  if [ -n "$target" ]; then
    cargo build --release -p burrow --target "$target" --manifest-path "$root/Cargo.toml"
    binary="$root/target/$target/release/burrow"
  else
    cargo build --release -p burrow --manifest-path "$root/Cargo.toml"
    binary="$root/target/release/burrow"
  fi
fi
if [ ! -x "$binary" ]; then
  echo "build-deb.sh: $binary is not an executable; build it first or drop --binary" >&2
  exit 66
fi
if [ -z "$arch" ]; then
  if [ -n "$target" ]; then arch=$(deb_arch_of "$target"); else arch=$(dpkg --print-architecture); fi
fi
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/Cargo.toml" | head -n 1)
[ -n "$version" ] || { echo "build-deb.sh: no version in $root/Cargo.toml" >&2; exit 65; }
# The newest glibc symbol version the binary uses (any architecture: no objdump needed).
libc=$(grep -aoE 'GLIBC_[0-9]+\.[0-9]+(\.[0-9]+)?' "$binary" | sed 's/GLIBC_//' | sort -uV | tail -n 1)
[ -n "$libc" ] || libc=2.31

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
chmod 0755 "$stage"
install -D -m 0755 "$binary" "$stage/usr/bin/burrow"
for unit in burrow-agent.service burrow-relay.service burrow-enroll.service; do
  install -D -m 0644 "$root/dist/systemd/$unit" "$stage/usr/lib/systemd/system/$unit"
done
for example in agent.toml agent-soracom.toml relay.toml; do
  install -D -m 0644 "$root/dist/examples/$example" "$stage/usr/share/doc/burrow/examples/$example"
done
install -D -m 0644 "$root/dist/deb/copyright" "$stage/usr/share/doc/burrow/copyright"
# Keeps ModemManager from probing console adapters with AT commands (read at the next plug-in).
install -D -m 0644 "$root/dist/udev/60-burrow-consoles.rules" "$stage/usr/lib/udev/rules.d/60-burrow-consoles.rules"
install -d -m 0755 "$stage/DEBIAN"
for script in postinst prerm postrm; do
  install -m 0755 "$root/dist/deb/$script" "$stage/DEBIAN/$script"
done
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat >"$stage/DEBIAN/control" <<CONTROL
Package: burrow
Version: $version-1
Architecture: $arch
Maintainer: burrow maintainers <burrow@example.invalid>
Installed-Size: $size
Depends: libc6 (>= $libc), libgcc-s1, adduser
Suggests: openssh-client
Section: net
Priority: optional
Homepage: https://example.invalid/burrow
Description: remote access to devices behind NAT through a relay, with stock SSH
 burrow keeps devices behind NAT, CGNAT or cellular networks (Raspberry Pis on
 SIM data plans, console servers at remote sites) reachable through a relay.
 Operators use stock ssh; devices run the agent, which reconnects forever,
 proves its tunnel end to end, serves serial consoles, and can start and stop
 its tunnel on demand from SORACOM Air user data or any URL.
 .
 This package holds the agent and the relay, with systemd units for both.
CONTROL
mkdir -p "$out"
deb="$out/burrow_${version}-1_${arch}.deb"
dpkg-deb --root-owner-group "-Z$compression" --build "$stage" "$deb" >/dev/null
echo "$deb"
