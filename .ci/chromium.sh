#!/usr/bin/env bash
# CI: install Debian's chromium for the report's headless-browser test (tests/test_report.py).
# Idempotent: does nothing when chromium is already there. Tolerant: when apt fails (no root,
# no network, not Debian) it says so and exits 0; the browser test then skips.
set -u
for exe in chromium chromium-browser; do
    if command -v "$exe" >/dev/null 2>&1; then
        echo "chromium.sh: $exe already installed ($(command -v "$exe"))"
        exit 0
    fi
done
if ! command -v apt-get >/dev/null 2>&1; then
    echo "chromium.sh: no apt-get here; not installing chromium (the browser test will skip)"
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo="sudo -n"
    else
        echo "chromium.sh: not root and no passwordless sudo; not installing chromium"
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
if $sudo apt-get update -qq && $sudo apt-get install -y -qq chromium; then
    echo "chromium.sh: installed $(command -v chromium || echo chromium)"
else
    echo "chromium.sh: apt-get failed (exit $?); continuing without chromium (the browser test will skip)"
fi
exit 0
