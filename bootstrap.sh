#!/usr/bin/env bash
# The two commands a new user needs, on a fresh Debian machine as root:
#
#   ./bootstrap.sh examples   install everything, build the demo boards, run the example HIL tests
#   ./bootstrap.sh test       install everything, build the demo boards, run lint and the test suite
#
# Extra arguments are passed to pytest.  Everything it installs is idempotent: a second run only runs tests.
set -euo pipefail
cd "$(dirname "$0")"

mode=${1:-}
case "$mode" in
  examples|test) shift ;;
  *) echo "usage: $0 examples|test [pytest args...]" >&2; exit 2 ;;
esac

# Debian packages: QEMU under TCG, Debian's U-Boot builds, BusyBox for the initramfs, socat for pty pairs,
# iproute2 for network namespaces, cpio/xz/zstd for images, syslinux/mtools/dosfstools for the boot
# disk a Jumpstarter QEMU exporter boots (built without mounting anything), openssh-client for the ssh
# driver (the demo board's dropbear-bin and openssh-sftp-server are only extracted by build-images).
apt_packages=(qemu-system-x86 qemu-system-arm qemu-utils u-boot-qemu busybox-static socat cpio iproute2
              xz-utils zstd kmod ca-certificates
              syslinux syslinux-common mtools dosfstools openssh-client
              chromium)   # headless: the pytest-html report is checked in a real browser
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "== installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The package and its test tools, in a venv of its own so the system Python stays untouched.
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  python3 -m venv .venv
fi
if ! .venv/bin/python -c "import pytest_jumpstarter, xdist, pytest_timeout, ruff, mypy, jumpstarter_cli" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
  echo "== installing pytest-jumpstarter into .venv"
  # [jumpstarter]: the Jumpstarter client stack, for driver: jumpstarter and its tests (real exporters).
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,lint,jumpstarter]'
  # pytest-embedded beside us, for the coexistence test only: in a folder of its own, because in the
  # venv its autouse fixtures would take part in every inner test run.
  # Its dependencies other than pytest and pexpect (which the venv has) go there too.
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --target .venv/compat \
    'pytest-embedded>=2.9,<3' 'filelock>=3.12.2'
  touch .venv/.installed
fi

# The demo boards (kernel, BusyBox initramfs, U-Boot), built from Debian's packages into a cache folder.
echo "== building demo board images"
scripts/build-images

export JUMPSTARTER_REQUIRE_IMAGES=1
if [ "$mode" = examples ]; then
  echo "== running the example HIL tests against the built-in QEMU board"
  exec .venv/bin/python -m pytest conftest_examples --target=conftest_examples/qemu-x86_64.yaml -v --timeout=600 "$@"
fi

echo "== lint"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
echo "== test suite"
# Every wait in the code has its own deadline; --timeout is the last guard, so that a bug in one can
# cost a test, never the whole CI budget.
exec .venv/bin/python -m pytest tests --timeout=600 "$@"
