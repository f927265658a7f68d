#!/usr/bin/env bash
# Every check CI runs, from a clean clone: formatting, clippy, unit tests, integration tests against
# real parts (a throwaway PostgreSQL cluster, moto for S3/Glue/SNS/Step Functions) and the checks of
# template.yaml and statemachine.asl.json. Installs what it needs (moto in .venv, PostgreSQL and
# Chromium from Debian when absent, lint tools).
#
#   bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "test tools (moto server in .venv, PostgreSQL, Chromium)"
bash scripts/setup-test-tools.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test (unit + integration)"
cargo test --workspace --locked

if [ -f scripts/check-deploy-artifacts.sh ]; then
    step "deployment artifacts (cfn-lint, sam validate, statelint, checkov)"
    bash scripts/check-deploy-artifacts.sh
fi
