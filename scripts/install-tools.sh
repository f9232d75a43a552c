#!/usr/bin/env bash
# The monitoring binaries `make test` and the local stack run: Debian's `prometheus` (prometheus,
# promtool) and `prometheus-alertmanager` (prometheus-alertmanager, amtool). A no-op when they
# are there; installs them when it can (root, or passwordless sudo); otherwise stops with the
# one command to run. Called by `make setup`.
set -euo pipefail

PACKAGES=(prometheus prometheus-alertmanager)
INSTALL="sudo apt-get install -y --no-install-recommends ${PACKAGES[*]}"

# RELAYQ_TOOLS_PATH (tests only) replaces PATH and /usr/bin as the places to look.
have() {
  if [ -n "${RELAYQ_TOOLS_PATH:-}" ]; then
    PATH="$RELAYQ_TOOLS_PATH" command -v "$1" >/dev/null 2>&1
  else
    command -v "$1" >/dev/null 2>&1 || [ -x "/usr/bin/$1" ]
  fi
}
missing() {
  local tool out=()
  for tool in prometheus promtool prometheus-alertmanager amtool; do
    have "$tool" || out+=("$tool")
  done
  echo "${out[*]:-}"
}

absent=$(missing)
[ -z "$absent" ] && exit 0

echo "== missing: $absent; installing ${PACKAGES[*]} from Debian" >&2
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo="sudo -n"
  else
    echo "make setup: $absent not installed, and installing needs root. Run:" >&2
    echo "  $INSTALL" >&2
    exit 1
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "make setup: $absent not installed and this is not a Debian/Ubuntu machine (no apt-get)." >&2
  echo "Install Prometheus 2.x and Alertmanager 0.25+ so that prometheus, promtool," >&2
  echo "prometheus-alertmanager (or a symlink to alertmanager) and amtool are on PATH." >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# The packages' own services may start on :9090/:9093; nothing of ours uses those (tests and
# the local stack run their own on free ports).
$sudo apt-get update -qq >/dev/null
$sudo apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
absent=$(missing)
if [ -n "$absent" ]; then
  echo "make setup: still missing after the install: $absent. Run: $INSTALL" >&2
  exit 1
fi
echo "== $(promtool --version 2>&1 | head -1); $(amtool --version 2>&1 | head -1)" >&2
