#!/usr/bin/env bash
# The whole test run, as CI runs it: install what is missing (system packages from
# Debian, then this package with its test extras), lint, type-check, check layering,
# and run the test suite. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v git >/dev/null 2>&1 || missing+=(git)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing system packages: ${missing[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# PostgreSQL binaries for the store tests (a throwaway cluster is started by the tests).
bash scripts/pg-ensure.sh

python3 -m pip install --quiet --disable-pip-version-check -e '.[test]'

echo "== ruff";         python3 -m ruff check .
echo "== mypy";         python3 -m mypy
echo "== mypy (benchmarks)"; python3 -m mypy benchmarks  # scripts, not a package
echo "== import-linter"; lint-imports
echo "== pytest";       python3 -m pytest -q -p no:cacheprovider "$@"
