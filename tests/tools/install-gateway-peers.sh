#!/usr/bin/env bash
# Installs what the gateway end-to-end tests drive: NGINX and Caddy (Debian
# packages) and ganache (an Ethereum JSON-RPC dev node, from npm, into
# tests/.tools/). Nothing is started here; the tests start each one bound to
# 127.0.0.1 on ports they pick, and stop it. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
command -v caddy >/dev/null 2>&1 || missing+=(caddy)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]} (gateway tests)"
  SUDO=""
  if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; fi
  # Packages must not start their services (they would listen on :80).
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
  $SUDO rm -f /usr/sbin/policy-rc.d
fi

if [ ! -f .tools/node_modules/ganache/dist/node/cli.js ]; then
  command -v npm >/dev/null 2>&1 || { echo "npm not found: install Node.js (Debian: nodejs npm)" >&2; exit 1; }
  echo "== installing ganache 7.9.2 into tests/.tools (gateway tests)"
  mkdir -p .tools
  (cd .tools && npm install --no-audit --no-fund --loglevel=error ganache@7.9.2)
fi
