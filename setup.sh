#!/usr/bin/env bash
# Creates ./.venv with the pinned dependencies (about 6 GB, 1-2 minutes).
# Usage: bash setup.sh          # the recipe
#        bash setup.sh --test   # the recipe and its test dependencies
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || python3 -m venv .venv
requirements=(-r requirements.txt)
[ "${1:-}" = "--test" ] && requirements+=(-r requirements-test.txt)
.venv/bin/python -m pip install --quiet --disable-pip-version-check "${requirements[@]}"
