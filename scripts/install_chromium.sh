#!/usr/bin/env bash
# Make sure the browser tests (tests/test_ui_browser.py, tests/test_neuron_pages.py,
# tests/test_headless_chromium.py) have Debian's headless Chromium: `make test` runs this.
# Nothing to do when `chromium` is on the PATH or $CHROMIUM names one. Otherwise installs the
# `chromium` package with apt-get as root (CI, containers) or through password-less sudo; when
# neither is possible it says so, and the browser tests skip naming the reason (they fail
# instead when CI is set, so that CI never passes without them).
set -euo pipefail
if [ -n "${CHROMIUM:-}" ] && [ -x "${CHROMIUM}" ]; then exit 0; fi
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "make test: no chromium and no apt-get here: the browser tests will be skipped" \
       "(install Chromium and put it on the PATH, or set CHROMIUM=/path/to/chromium)" >&2
  exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "make test: no chromium, and installing it needs root: the browser tests will be" \
       "skipped (run \`sudo apt-get install -y chromium\` once to include them)" >&2
  exit 0
fi
echo "make test: installing Debian's chromium for the browser tests (apt-get, about a minute)"
"${as_root[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq chromium >/dev/null
command -v chromium
