#!/usr/bin/env bash
# Creates ./.venv with the pinned dependencies (about 6 GB, 1-2 minutes).
# Usage: bash setup.sh          # the recipe
#        bash setup.sh --test   # the recipe, its test dependencies and, for
#                               # tests/test_gallery.py, Debian's chromium
#                               # and chromium-driver (apt, if missing)
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] || python3 -m venv .venv
requirements=(-r requirements.txt)
[ "${1:-}" = "--test" ] && requirements+=(-r requirements-test.txt)
.venv/bin/python -m pip install --quiet --disable-pip-version-check "${requirements[@]}"
if [ "${1:-}" = "--test" ] && { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; }; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq chromium chromium-driver >/dev/null
fi
