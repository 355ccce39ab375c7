#!/usr/bin/env bash
# Installs the Debian packages Aether's setup and test suite need, when missing.
# Idempotent: does nothing when every command is already there.
set -euo pipefail

# command-to-check:debian-package
NEEDED=(
  "python3:python3"
  "node:nodejs"
  "npm:npm"
  "git:git"
  "curl:curl"
  "hyperfine:hyperfine"
  "bwrap:bubblewrap"
  "redis-server:redis-server"
  "wrk:wrk"
  "qemu-system-x86_64:qemu-system-x86"
  "busybox:busybox-static"
  "etcd:etcd-server"
  "etcdctl:etcd-client"
)

missing=()
for pair in "${NEEDED[@]}"; do
  cmd="${pair%%:*}"; pkg="${pair##*:}"
  command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
done
# the venv module is a separate package on Debian
python3 -c "import ensurepip, venv" >/dev/null 2>&1 || missing+=("python3-venv")
# the microvm sandbox boots a stock kernel
compgen -G "/boot/vmlinuz-*" >/dev/null || missing+=("linux-image-amd64")
# records on PostgreSQL: the tests start their own server from these binaries
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=("postgresql")

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "system-deps: installing ${missing[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "system-deps: need root (or sudo) to apt-get install: ${missing[*]}" >&2
    exit 1
  fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "system-deps: no apt-get here; install these yourself: ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
