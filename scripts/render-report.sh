#!/usr/bin/env bash
# Renders the demo month's quality report to docs/quality-report.png, the picture in the README:
# `tripflow demo` (200,000 generated trips, seed 42) into a scratch folder with its own private
# PostgreSQL, then the report page through the same headless Chromium the render test uses.
#
#   bash scripts/render-report.sh [OUT.png]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/quality-report.png}
chromium=${CHROMIUM:-/usr/bin/chromium}
[ -x "$chromium" ] || { echo "no $chromium: apt-get install chromium" >&2; exit 1; }

cargo build -q --bin tripflow
tripflow=target/debug/tripflow
scratch=$(mktemp -d)
trap '"$tripflow" db stop --data-dir "$scratch/data" >/dev/null 2>&1 || true; rm -rf "$scratch"' EXIT
"$tripflow" demo --data-dir "$scratch/data" >/dev/null 2>&1
page=$("$tripflow" report yellow/2021-03 --data-dir "$scratch/data")
"$chromium" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync --hide-scrollbars \
    --user-data-dir="$scratch/profile" --window-size=1200,2620 --screenshot="$out" "file://$page" 2>/dev/null
echo "wrote $out from $page"
