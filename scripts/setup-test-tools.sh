#!/usr/bin/env bash
# Installs the test tools (idempotent): moto in server mode into .venv, pinned at a version whose
# Step Functions interpreter works (5.2.1, often the machine's global one, fails every second run);
# PostgreSQL's server binaries and Chromium (the quality report's render test) from Debian.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv
if [ ! -x "$venv/bin/moto_server" ] || ! "$venv/bin/python" -c 'import moto, sys; v = tuple(int(x) for x in moto.__version__.split(".")[:3]); sys.exit(v < (5, 2, 5))' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'moto[server]>=5.2.5'
fi
"$venv/bin/python" -c 'import moto; print("moto", moto.__version__)'
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    echo "PostgreSQL server binaries not found: installing them (Debian)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
if [ -z "${CHROMIUM:-}" ] && [ ! -x /usr/bin/chromium ]; then
    echo "Chromium not found: installing Debian's chromium for the report render test" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
