#!/usr/bin/env bash
# The README's test command: install, then run the test suite. .ci/run calls this script, so the two cannot drift.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
VENV="${CM2_VENV:-.venv}"
set +e
"$VENV/bin/python" -m pytest -q "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: failing on purpose (an empty test run is not a pass)" >&2
  exit 1
fi
exit "$rc"
