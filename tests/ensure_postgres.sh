#!/bin/sh
# The PostgreSQL tests (tests/pgserver.py starts a private cluster per test session) need Debian's
# PostgreSQL binaries. Installs them when missing (needs root, as on CI); fails loudly otherwise.
set -eu
for initdb in /usr/lib/postgresql/*/bin/initdb; do
    if [ -x "$initdb" ]; then exit 0; fi
done
echo "ensure_postgres: installing postgresql (Debian package) for the PostgreSQL tests" >&2
SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
        echo "ensure_postgres: not root and no sudo: install postgresql by hand" >&2
        exit 1
    fi
fi
if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends postgresql; }; then
    echo "ensure_postgres: FAILED to install postgresql with apt-get" >&2
    exit 1
fi
for initdb in /usr/lib/postgresql/*/bin/initdb; do
    if [ -x "$initdb" ]; then exit 0; fi
done
echo "ensure_postgres: apt-get ran but no /usr/lib/postgresql/<version>/bin/initdb exists" >&2
exit 1
