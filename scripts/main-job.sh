#!/usr/bin/env bash
# The main job, end to end on a fresh machine: install what is needed, boot the real
# Linux test guest under QEMU, introspect it live over its QMP socket, then dump it and
# introspect the dump.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

step() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }
DIR=${VMI_MAIN_JOB_DIR:-$PWD/target/main-job}
mkdir -p "$DIR"

step "building vmi"
cargo build --release -q -p vmi-cli -p xtask
VMI=$PWD/target/release/vmi

step "booting the test guest (Debian kernel, busybox userland, QEMU TCG)"
cargo xtask guest up --dir "$DIR" >/dev/null
trap 'cargo xtask guest down --dir "$DIR" >/dev/null 2>&1 || true' EXIT
# shellcheck disable=SC1091
. "$DIR/guest.env"

step "vmi --target qemu:$QMP_SOCKET info   (live, attached by its QMP socket)"
"$VMI" --target "qemu:$QMP_SOCKET" info
step "vmi --target qemu:$QMP_SOCKET ps"
"$VMI" --target "qemu:$QMP_SOCKET" ps

step "dumping the guest to $DIR/guest.elf"
rm -f "$DIR/guest.elf"
cargo xtask guest dump --dir "$DIR" --format elf "$DIR/guest.elf"
step "vmi --target $DIR/guest.elf ps   (the dump)"
"$VMI" --target "$DIR/guest.elf" ps

step "done: the same processes, live and from the dump"
