#!/bin/sh
# The browser tests (tests/test_dashboard_browser.py) drive Debian's headless Chromium through
# chromedriver. Installs both when either is missing (needs root, as on CI); fails loudly otherwise.
# Only what they need: no recommended packages (131 of them otherwise), one font for readable screenshots.
set -eu
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi
echo "ensure_browser: installing chromium and chromium-driver (Debian packages) for the browser tests" >&2
SUDO=""
if [ "$(id -u)" != "0" ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
        echo "ensure_browser: not root and no sudo: install chromium and chromium-driver by hand" >&2
        exit 1
    fi
fi
if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-liberation; }; then
    echo "ensure_browser: FAILED to install chromium and chromium-driver with apt-get" >&2
    exit 1
fi
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    echo "ensure_browser: apt-get ran but /usr/bin/chromium or /usr/bin/chromedriver is still missing" >&2
    exit 1
fi
