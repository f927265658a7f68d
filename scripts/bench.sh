#!/usr/bin/env bash
# tripflow beside the obvious alternative (a DuckDB or Polars script, then PostgreSQL's own binary
# COPY), same machine, same session, interleaved, whole processes under /usr/bin/time; prints the
# medians and the ratios of issue 8's targets. Figures live here, never in timed tests.
#
#   bash scripts/bench.sh [--rows N] [--runs R] [--runs-10x R] [--no-10x] [--no-lambdas]
#                         default: 1,930,000 rows, 5 runs (3 at 10x), 10x too, Lambdas too
#
# Installs the anchors, pinned, into .venv (DuckDB, Polars, pyarrow, psycopg) and builds the release
# binary first. The 10x month (19.3 M rows) takes a few minutes per tripflow run. Unless
# --no-lambdas, it also builds the five Lambda bootstraps in release (about 20 minutes on 2 cores
# the first time): for this machine, whose binaries it starts against a stand-in for the runtime
# API to time their init, and for arm64 when that target and its linker are installed
# (`rustup target add aarch64-unknown-linux-gnu`, Debian's gcc-aarch64-linux-gnu), whose sizes
# are what Lambda deploys.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (Debian: apt-get install time)" >&2; exit 1; }
bash scripts/setup-test-tools.sh >/dev/null
.venv/bin/pip install --quiet --disable-pip-version-check \
    'duckdb==2.0.0' 'polars==2.1.0' 'pyarrow==26.0.1' 'psycopg[binary]==3.3.9'
cargo build --release --locked --bin tripflow >&2

args=()
lambdas=yes
for arg in "$@"; do
    if [ "$arg" = --no-lambdas ]; then lambdas=no; else args+=("$arg"); fi
done
if [ "$lambdas" = yes ]; then
    packages=(-p lambda-trigger -p lambda-ingest -p lambda-clean -p lambda-transform -p lambda-load)
    cargo build --release --locked "${packages[@]}" >&2
    args+=(--lambda-dir target/release)
    if rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu \
        && command -v aarch64-linux-gnu-gcc >/dev/null; then
        CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
        CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++ \
        AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar \
            cargo build --release --locked --target aarch64-unknown-linux-gnu "${packages[@]}" >&2
        args+=(--lambda-arm64-dir target/aarch64-unknown-linux-gnu/release)
    else
        echo "no arm64 target or linker: Lambda sizes are this machine's, not arm64's" >&2
    fi
fi
exec .venv/bin/python scripts/bench/bench.py --bin target/release/tripflow "${args[@]}"
