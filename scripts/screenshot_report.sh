#!/usr/bin/env bash
# Render a gradscope HTML report in headless Chromium and save a PNG screenshot, to check
# that the self-contained page (inline CSS, base64 PNG figures) displays in a real browser.
#
#   scripts/screenshot_report.sh report.html [screenshot.png] [WIDTHxHEIGHT]
#
# Installs Debian's chromium with apt-get when no chromium binary is found (needs root).
set -euo pipefail
report=${1:?usage: scripts/screenshot_report.sh REPORT.html [OUT.png] [1200x3000]}
out=${2:-${report%.html}.png}
size=${3:-1200x3000}
[ -f "$report" ] || { echo "no such file: $report" >&2; exit 2; }
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$browser" ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    browser=$(command -v chromium)
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --hide-scrollbars --window-size="${size/x/,}" \
    --screenshot="$(realpath -m "$out")" "file://$(realpath "$report")" 2>/dev/null
[ -s "$out" ] || { echo "no screenshot written" >&2; exit 1; }
echo "screenshot: $out"
