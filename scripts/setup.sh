#!/usr/bin/env bash
# Create .venv and install dmattack (editable, with dev tools, TensorBoard and the offline
# Inception weights) unless already up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.dmattack-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev,tensorboard,inception]'
  echo "$want" > "$stamp"
fi
