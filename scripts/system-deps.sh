#!/usr/bin/env bash
# Installs the Debian packages Aether needs, when missing. Idempotent: does nothing
# when every command is already there.
#
#   scripts/system-deps.sh run    what `aether up --demo` uses (make run)
#   scripts/system-deps.sh test   that, and what the test suite starts (make test)
set -euo pipefail

profile="${1:-test}"

# command-to-check:debian-package
RUN=(
  "python3:python3"
  "bwrap:bubblewrap"     # app instances run sandboxed by default
  "setpriv:util-linux"   # the sandbox drops to an unprivileged uid per instance
  "prlimit:util-linux"   # and sets its rlimits
)
TEST=(
  "node:nodejs"
  "npm:npm"
  "git:git"
  "curl:curl"
  "hyperfine:hyperfine"
  "redis-server:redis-server"
  "wrk:wrk"
  "qemu-system-x86_64:qemu-system-x86"
  "busybox:busybox-static"
  "etcd:etcd-server"
  "etcdctl:etcd-client"
  "chromium:chromium"    # the console's browser tests (Playwright, executable_path)
  "systemd-analyze:systemd"  # `aether install`'s tests verify the rendered units
)

case "$profile" in
  run) NEEDED=("${RUN[@]}") ;;
  test) NEEDED=("${RUN[@]}" "${TEST[@]}") ;;
  *) echo "system-deps: unknown profile '$profile' (run or test)" >&2; exit 2 ;;
esac

missing=()
for pair in "${NEEDED[@]}"; do
  cmd="${pair%%:*}"; pkg="${pair##*:}"
  command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
done
# the venv module is a separate package on Debian
python3 -c "import ensurepip, venv" >/dev/null 2>&1 || missing+=("python3-venv")
if [ "$profile" = test ]; then
  # the microvm sandbox boots a stock kernel
  compgen -G "/boot/vmlinuz-*" >/dev/null || missing+=("linux-image-amd64")
  # records on PostgreSQL: the tests start their own server from these binaries
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=("postgresql")
fi

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
# one package may be named by several commands
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)

echo "system-deps ($profile): installing ${missing[*]}" >&2
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
