#!/usr/bin/env bash
# Set up (first run only) and run the whole test suite, lint included.
set -euo pipefail
cd "$(dirname "$0")/.."
# The leaderboard's browser test (tests/test_leaderboard.py) drives headless Chromium through
# chromedriver, from Debian's packages; with CI=true it fails rather than skips without them.
if ! command -v chromedriver >/dev/null || ! command -v chromium >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "note: chromium/chromedriver missing and not installable here (not root):" \
         "the leaderboard browser test will be skipped" >&2
  fi
fi
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest -q "$@"
