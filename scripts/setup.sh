#!/usr/bin/env bash
# Create .venv (Python 3.11) and install the kernel with every in-tree plugin, editable.
# Usage: scripts/setup.sh [--test]   (--test adds what the test suite needs)
set -euo pipefail
cd "$(dirname "$0")/.."
python=$(command -v python3.11 || command -v python3)
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
extra=""
[ "${1:-}" = "--test" ] && extra="[test]"
packages=(-e ".$extra")
for plugin in plugins/*/ plugins/backends/*/; do
    [ -f "$plugin/pyproject.toml" ] && packages+=(-e "$plugin$extra")
done
.venv/bin/python -m pip install -q "${packages[@]}"
