#!/usr/bin/env bash
# Build gate of vmi-driver-xen's `xen-sys` feature against BOTH Debian header sets:
# libxen-dev 4.17 (bookworm) and 4.20 (trixie, through a private apt configuration),
# downloaded and unpacked by `cargo xtask xen headers` (never installed). For each, the
# bindings are generated from the unpacked headers and the crate's test binary is linked
# (4.17 against the unpacked .so files, 4.20 statically against its .a files, whose .so
# files would need trixie's glibc) and run (off Xen, LibXen::open must fail cleanly).
# Both builds use the workspace's target directory: the build script reruns on the XEN_*
# variables it declares, so only vmi-driver-xen is built again for each set (and once more
# by the next build without them), while its dependencies and bindgen are the ones clippy
# and the tests build anyway (a target directory of its own cost ~100 s of a cold CI run).
# Needs libclang (scripts/setup.sh installs libclang-dev).
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${CARGO_TARGET_DIR:-$PWD/target}
for v in 4.17 4.20; do
  root=$(cargo run -q -p xtask -- xen headers --xen "$v")
  lib=$root/usr/lib/x86_64-linux-gnu
  static=0; [ "$v" = 4.20 ] && static=1
  echo "[xen-build-gate] Xen $v headers: $root (static=$static)" >&2
  XEN_HEADERS_DIR=$root/usr/include XEN_LIB_DIR=$lib XEN_STATIC=$static \
    CARGO_TARGET_DIR=$BASE LD_LIBRARY_PATH=$lib \
    cargo test -q -p vmi-driver-xen --features xen-sys --lib -- ffi abi
done
echo "[xen-build-gate] vmi-driver-xen builds, links and runs against Xen 4.17 and 4.20 headers" >&2
