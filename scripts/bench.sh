#!/usr/bin/env bash
# tripflow beside the obvious alternative (a DuckDB or Polars script, then PostgreSQL's own binary
# COPY), same machine, same session, interleaved, whole processes under /usr/bin/time; prints the
# medians and the ratios of issue 8's targets. Figures live here, never in timed tests.
#
#   bash scripts/bench.sh [--rows N] [--runs R] [--no-10x]     default: 1,930,000 rows, 3 runs, 10x too
#
# Installs the anchors, pinned, into .venv (DuckDB, Polars, pyarrow, psycopg) and builds the release
# binary first. The 10x month (19.3 M rows) takes a few minutes per tripflow run.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x /usr/bin/time ] || { echo "needs /usr/bin/time (Debian: apt-get install time)" >&2; exit 1; }
bash scripts/setup-test-tools.sh >/dev/null
.venv/bin/pip install --quiet --disable-pip-version-check \
    'duckdb==2.0.0' 'polars==2.1.0' 'pyarrow==26.0.1' 'psycopg[binary]==3.3.9'
cargo build --release --locked --bin tripflow >&2
exec .venv/bin/python scripts/bench/bench.py --bin target/release/tripflow "$@"
