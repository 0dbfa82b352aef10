#!/usr/bin/env bash
# Installs what the project needs on a fresh Debian 12 machine (idempotent):
# QEMU and busybox for the test guest, makedumpfile for the dump tests, libvirt's daemon
# for the libvirt: target tests, and a Python
# venv with Volatility 3 (the independent oracle of the OS-layer tests), pytest, and our
# Python package `vmi` (crates/vmi-python, built by maturin).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*" >&2; }

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || need+=(busybox-static)
command -v makedumpfile >/dev/null || need+=(makedumpfile)
# vmi-driver-xen's xen-sys feature (built by --all-features): bindgen needs libclang, the FFI libxen-dev.
dpkg -s libclang-dev libxen-dev >/dev/null 2>&1 || need+=(libclang-dev libxen-dev)
command -v bpftool >/dev/null || need+=(bpftool)
# gdb: the test harness's watchdog prints every thread's backtrace of a hung test.
command -v gdb >/dev/null || need+=(gdb)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
# libvirt: the daemon (its user, directories and qemu.conf; the sysv flavour, which needs
# no systemd) and virsh, for the libvirt: target tests (crates/vmi-cli/tests/libvirt.rs),
# which start libvirtd themselves when none runs. The driver loads libvirt.so.0 at run time.
dpkg -s libvirt-daemon-system libvirt-clients >/dev/null 2>&1 || need+=(libvirt-daemon-system libvirt-daemon-system-sysv libvirt-clients)
if [ ${#need[@]} -gt 0 ]; then
  log "apt-get install ${need[*]}"
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi

# /dev/kvm with udev's usual owner and mode (root:kvm 0660; machines without udev leave
# it root-only): libvirt probes QEMU's capabilities as root, sees KVM, and when QEMU's
# user (libvirt-qemu, in group kvm) cannot open /dev/kvm it throws the probe away and
# probes again at every lookup: a `virsh create` then takes a minute instead of 2 s.
if [ -c /dev/kvm ] && getent group kvm >/dev/null && [ "$(stat -c %G /dev/kvm)" = root ]; then
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO chgrp kvm /dev/kvm && $SUDO chmod 0660 /dev/kvm || log "warning: cannot give /dev/kvm to group kvm (libvirt tests will be slow)"
fi

# Volatility 3 in a project-local venv (tests find it at target/venv/bin/vol).
VENV=target/venv
# A venv copied or moved from another directory (a target/ reused elsewhere) has console
# scripts whose interpreter line points there: `vol` would fail with "no such file".
if [ -d "$VENV" ] && ! head -n 1 "$VENV/bin/pip" 2>/dev/null | grep -qxF "#!$PWD/$VENV/bin/python3"; then
  log "recreating $VENV: it was made for another directory"
  rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/vol" ]; then
  log "creating $VENV with volatility3"
  mkdir -p target
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check 'volatility3==2.28.2' || log "warning: volatility3 could not be installed"
fi
# yara-python: Volatility's yarascan/vmayarascan, the oracle of `vmi scan`'s test.
if ! "$VENV/bin/python" -c 'import yara' 2>/dev/null; then
  "$VENV/bin/pip" install -q --disable-pip-version-check 'yara-python==4.5.4' || log "warning: yara-python could not be installed"
fi

# The Python package `vmi`, built from crates/vmi-python in the dev profile (it shares
# the dependencies the tests already built; a release build compiles them all again) and
# installed editable into the venv, so `target/venv/bin/python -c 'import vmi'` works.
# With the `xen` feature (libxen-dev and libclang are installed above): `xen:` targets,
# which the nested Xen smoke test runs in its dom0 with this very module.
if [ ! -x "$VENV/bin/maturin" ] || [ ! -x "$VENV/bin/pytest" ]; then
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check 'maturin>=1.5,<2' 'pytest>=8,<10'
fi
log "building the Python package vmi (maturin develop)"
(cd crates/vmi-python && VIRTUAL_ENV="$PWD/../../$VENV" "../../$VENV/bin/maturin" develop -q --features xen)

command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest >/dev/null 2>&1 || log "cargo-nextest unavailable: tests will run with cargo test"
log "ready"
