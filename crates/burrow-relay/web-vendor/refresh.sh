#!/bin/sh
# Refreshes the vendored front-end files of the web console from their npm packages.
# Needs npm (only to refresh: building burrow uses the files committed here).
#   ./refresh.sh                 the versions in VERSIONS
#   ./refresh.sh 6.0.1 0.11.0 3.18.1   new versions of xterm, the fit addon, asciinema-player
set -eu
here=$(cd "$(dirname "$0")" && pwd)
. "$here/VERSIONS"
XTERM=${1:-$XTERM}
XTERM_FIT=${2:-$XTERM_FIT}
ASCIINEMA_PLAYER=${3:-$ASCIINEMA_PLAYER}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
npm pack --silent "@xterm/xterm@$XTERM" "@xterm/addon-fit@$XTERM_FIT" "asciinema-player@$ASCIINEMA_PLAYER" >/dev/null
for p in xterm-xterm-"$XTERM" xterm-addon-fit-"$XTERM_FIT" asciinema-player-"$ASCIINEMA_PLAYER"; do
    mkdir "$p"
    tar xzf "$p.tgz" -C "$p"
done
cp xterm-xterm-"$XTERM"/package/lib/xterm.js "$here/xterm.js"
cp xterm-xterm-"$XTERM"/package/css/xterm.css "$here/xterm.css"
cp xterm-xterm-"$XTERM"/package/LICENSE "$here/LICENSE.xterm"
cp xterm-addon-fit-"$XTERM_FIT"/package/lib/addon-fit.js "$here/addon-fit.js"
cp xterm-addon-fit-"$XTERM_FIT"/package/LICENSE "$here/LICENSE.addon-fit"
cp asciinema-player-"$ASCIINEMA_PLAYER"/package/dist/bundle/asciinema-player.min.js "$here/asciinema-player.min.js"
cp asciinema-player-"$ASCIINEMA_PLAYER"/package/dist/bundle/asciinema-player.css "$here/asciinema-player.css"
cp asciinema-player-"$ASCIINEMA_PLAYER"/package/LICENSE "$here/LICENSE.asciinema-player"
# The binary embeds the gzipped copies (served with Content-Encoding: gzip): -n keeps them
# byte-for-byte reproducible.
for f in xterm.js xterm.css addon-fit.js asciinema-player.min.js asciinema-player.css; do
    gzip -9 -n -k -f "$here/$f"
done
cat > "$here/VERSIONS" <<VERSIONS
# npm packages vendored here (sourced by refresh.sh)
XTERM=$XTERM
XTERM_FIT=$XTERM_FIT
ASCIINEMA_PLAYER=$ASCIINEMA_PLAYER
VERSIONS
echo "vendored @xterm/xterm $XTERM, @xterm/addon-fit $XTERM_FIT, asciinema-player $ASCIINEMA_PLAYER"
