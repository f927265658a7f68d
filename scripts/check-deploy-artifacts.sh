#!/usr/bin/env bash
# Checks the deployment artifacts without AWS or Docker:
#   template.yaml          cfn-lint, `sam validate --lint`, checkov (zero failures; every skip is
#                          written in the template with its reason)
#   statemachine.asl.json  @wmfs/statelint
# The Rust test target `deploy_artifacts` checks what these tools cannot (retries, catches,
# substitutions, the README diagram).
#
# Installs its own tools on first use, pinned, into .venv-tools/ (Python) and tools/asl/node_modules
# (npm), both gitignored, and reuses them afterwards. Needs python3 (with venv), node and npm, and
# PyPI and npm registry access on the first run only. Non-interactive; safe to rerun.
#
# Runs every check even after one fails, then exits non-zero if any did.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${TRIPFLOW_TOOLS_DIR:-$ROOT/.venv-tools}"
PYTHON="${PYTHON:-python3}"
ASL_TOOLS="$ROOT/tools/asl"

# Bump together; aws-sam-cli 1.170 requires cfn-lint >=1.52,<1.59.
SAM_SPEC="aws-sam-cli==1.170.0 cfn-lint==1.58.0"
CHECKOV_SPEC="checkov==3.3.30"

export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
export npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false

log() { printf '==> %s\n' "$*"; }

# venv NAME SPEC: creates $TOOLS/NAME with SPEC installed unless it already holds exactly SPEC.
# The stamp is written last, so an interrupted install is redone on the next run.
venv_ready() { [[ -x "$TOOLS/$1/bin/python" && "$(cat "$TOOLS/$1/.spec" 2>/dev/null)" == "$2" ]]; }
venv_install() {
  local name="$1" spec="$2" dir="$TOOLS/$1"
  rm -rf "$dir"
  "$PYTHON" -m venv "$dir"
  # shellcheck disable=SC2086 # SPEC is a list of requirements
  "$dir/bin/pip" install --quiet $spec
  printf '%s' "$spec" >"$dir/.spec"
}

install_tools() {
  mkdir -p "$TOOLS"
  local pids=() names=() name spec
  # The two pip installs are independent: run them side by side (about a minute each, cold).
  for entry in "sam|$SAM_SPEC" "checkov|$CHECKOV_SPEC"; do
    name="${entry%%|*}" spec="${entry#*|}"
    if ! venv_ready "$name" "$spec"; then
      log "installing $spec into ${TOOLS#"$ROOT"/}/$name"
      venv_install "$name" "$spec" >"$TOOLS/$name.install.log" 2>&1 &
      pids+=("$!") names+=("$name")
    fi
  done
  local i failed=0
  for i in "${!pids[@]}"; do
    if ! wait "${pids[$i]}"; then
      echo "installing ${names[$i]} failed:" >&2
      cat "$TOOLS/${names[$i]}.install.log" >&2
      failed=1
    fi
  done
  [[ $failed -eq 0 ]] || exit 1

  local lock_sum
  lock_sum="$(sha256sum "$ASL_TOOLS/package-lock.json" | cut -d' ' -f1)"
  if [[ "$(cat "$ASL_TOOLS/node_modules/.tripflow-lock" 2>/dev/null)" != "$lock_sum" ]]; then
    log "installing tools/asl (npm ci)"
    # No install scripts: statelint needs none, and its dependency core-js-pure only prints ads.
    (cd "$ASL_TOOLS" && npm ci --ignore-scripts --no-progress --loglevel=error)
    printf '%s' "$lock_sum" >"$ASL_TOOLS/node_modules/.tripflow-lock"
  fi
}

passed=0
failed=0
check() {
  local name="$1"
  shift
  log "$name: $*"
  if "$@"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    echo "FAILED: $name" >&2
  fi
}

# sam needs a Region and credentials to exist, never to be valid: it does not call AWS here.
sam_validate() {
  env -u AWS_PROFILE -u AWS_SESSION_TOKEN \
    AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}" AWS_REGION="${AWS_DEFAULT_REGION:-us-east-1}" \
    AWS_ACCESS_KEY_ID=AKIAFAKEFAKEFAKEFAKE AWS_SECRET_ACCESS_KEY=fake-secret-for-offline-validation \
    AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null SAM_CLI_TELEMETRY=0 \
    "$TOOLS/sam/bin/sam" validate --lint --template-file template.yaml
}

main() {
  local start=$SECONDS
  install_tools
  cd "$ROOT"
  check cfn-lint "$TOOLS/sam/bin/cfn-lint" template.yaml
  check sam-validate sam_validate
  check statelint "$ASL_TOOLS/node_modules/.bin/statelint" statemachine.asl.json
  check checkov "$TOOLS/checkov/bin/checkov" -f template.yaml --framework cloudformation --skip-download --compact --quiet
  log "done in $((SECONDS - start)) s"
  echo "deploy-artifacts: $passed passed, $failed failed"
  [[ $failed -eq 0 ]]
}

main "$@"
