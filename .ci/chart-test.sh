#!/usr/bin/env bash
# Lint, render and validate the permd Helm chart (charts/permd) and its permd.sidecar template.
# Needs only python3 and PyPI: Helm v4 comes as a library (helm-python-sdk), no cluster is used.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv="${PERMD_VENV:-/tmp/permd-venv}"

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r tests/chart/requirements.txt

export PYTHONDONTWRITEBYTECODE=1
exec "$venv/bin/python" -m pytest tests/chart -q -p no:cacheprovider "$@"
