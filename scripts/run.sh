#!/usr/bin/env bash
# The README's main job: install, then run cm2 on its embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
VENV="${CM2_VENV:-.venv}"
exec "$VENV/bin/cm2" train --preset tiny-cpu "$@"
