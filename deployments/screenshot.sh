#!/usr/bin/env bash
# Screenshot a page of the Prefect UI with headless Chromium (opt-in: installs Debian's chromium).
#
#   deployments/screenshot.sh URL OUT.png [DOM.html]     e.g. a finished run's page:
#   deployments/screenshot.sh http://127.0.0.1:4200/runs/flow-run/<id> docs/flow-run.png
#
# With DOM.html, the rendered page's HTML is saved too, for tests to check what the page says.
# Set BATCHLINE_NO_INSTALL=1 to fail instead of installing chromium when it is missing.
set -euo pipefail

if [ $# -lt 2 ] || [ $# -gt 3 ]; then
    echo "usage: $0 URL OUT.png [DOM.html]" >&2
    exit 2
fi
url=$1
out=$2
dom=${3:-}

if ! command -v chromium >/dev/null 2>&1; then
    if [ "${BATCHLINE_NO_INSTALL:-0}" = 1 ]; then
        echo "chromium is not installed (apt-get install -y chromium)" >&2
        exit 3
    fi
    sudo_cmd=""
    [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update
    $sudo_cmd apt-get install -y chromium
fi

browse() {
    # A fresh profile each time: no first-run dialogs, no state from an earlier session. The
    # virtual time budget lets the UI's single-page app fetch its data and draw the run graph.
    local profile
    profile=$(mktemp -d)
    chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync \
        --user-data-dir="$profile" --window-size=1600,1000 --virtual-time-budget=15000 "$@"
    rm -rf "$profile"
}

browse --screenshot="$out" "$url" >/dev/null 2>&1
test -s "$out"
echo "saved $out"
if [ -n "$dom" ]; then
    browse --dump-dom "$url" >"$dom" 2>/dev/null
    echo "saved $dom"
fi
