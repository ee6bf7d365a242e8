#!/usr/bin/env bash
# Make sure PostgreSQL server binaries (initdb, postgres) exist for the PostgreSQL store tests
# (tests/pg.py starts a throwaway cluster from them). When initdb is found nowhere, installs
# Debian's `postgresql` package with apt-get (as root, or through sudo). Idempotent; exits
# non-zero only when the install fails.
set -euo pipefail

find_initdb() {
  local bindir
  if command -v pg_config >/dev/null 2>&1; then
    bindir="$(pg_config --bindir 2>/dev/null || true)"
    if [ -n "$bindir" ] && [ -x "$bindir/initdb" ]; then echo "$bindir/initdb"; return 0; fi
  fi
  while IFS= read -r bindir; do  # the newest Debian version first
    if [ -x "$bindir/initdb" ]; then echo "$bindir/initdb"; return 0; fi
  done < <(printf '%s\n' /usr/lib/postgresql/*/bin | sort -t/ -k5 -V -r)
  command -v initdb 2>/dev/null && return 0
  return 1
}

if initdb_path="$(find_initdb)"; then
  echo "PostgreSQL found: $initdb_path"
  exit 0
fi

echo "PostgreSQL (initdb) not found: installing Debian's postgresql package"
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# The package's post-install script creates and starts a default cluster where it can; the
# tests never use it (they run their own), so a failure to start it there is harmless.
$SUDO apt-get install -y -qq --no-install-recommends postgresql

if initdb_path="$(find_initdb)"; then
  echo "PostgreSQL installed: $initdb_path"
else
  echo "postgresql was installed but no initdb was found" >&2
  exit 1
fi
