#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, docs, and every test,
# including the ones that boot the real Linux test guest (VMI_REQUIRE_GUEST=1 makes a
# guest test fail instead of skipping when it cannot boot).
set -euo pipefail
cd "$(dirname "$0")/.."
# Each step says how long the run has taken so far, so a slow CI run shows where.
# With the CPU time left idle so far (both cores together), which shows where work could
# still run in parallel.
idle() { awk '/^cpu /{printf "%d", $5 / 100}' /proc/stat 2>/dev/null || echo 0; }
idle0=$(idle)
step() { printf '\n== %s (at %d s, %d s idle)\n' "$*" "$SECONDS" $(( $(idle) - idle0 )) >&2; }
step "set-up (scripts/setup.sh)"
bash scripts/setup.sh

export VMI_REQUIRE_GUEST=${VMI_REQUIRE_GUEST:-1}

step "cargo fmt --check"
cargo fmt --all --check

# Xen's packages (the build gate's headers, the nested smoke test's hypervisor, tools,
# kernel and Python) download in the background while clippy runs: on a fresh machine
# that is a minute and a half of waiting on the network. The steps that need them wait
# on the same cache locks, and fetch again themselves if this failed.
step "Xen packages: fetching in the background"
cargo build -q -p xtask
fetch_log=target/fetch.log
(
  set -e
  x=${CARGO_TARGET_DIR:-target}/debug/xtask
  "$x" xen headers --xen 4.17 >/dev/null
  "$x" xen headers --xen 4.20 >/dev/null
  if [ "${VMI_XEN_SMOKE:-1}" = 1 ]; then "$x" xen smoke --xen 4.17 --fetch-only; fi
) >"$fetch_log" 2>&1 &
fetch_pid=$!
trap 'kill "$fetch_pid" 2>/dev/null || true' EXIT

step "cargo clippy"
cargo clippy --workspace --all-targets --all-features -- -D warnings
step "cargo doc"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features
step "facade feature combinations"
for f in "" arch-amd64 driver-mock driver-dump driver-qemu driver-xen profile symsrv os-linux os-windows utils; do cargo check -q -p vmi --no-default-features ${f:+--features $f}; done
# Only `symsrv` may bring a TLS stack (issue 18).
if cargo tree -q -p vmi -e normal --features profile,os-linux,os-windows,utils,driver-dump,driver-qemu,driver-xen,driver-mock | grep -Eq 'ureq|rustls'; then
  echo "the facade without symsrv depends on a TLS crate"; exit 1
fi
if ! wait "$fetch_pid"; then
  echo "warning: fetching Xen's packages in the background failed (the next steps fetch again):" >&2
  cat "$fetch_log" >&2
fi
step "Xen build gate (4.17 and 4.20 headers)"; bash scripts/xen-build-gate.sh
if [ "${VMI_XEN_SMOKE:-1}" = 1 ]; then
  # The nested Xen smoke test's dom0 program, built now in the dev profile (its
  # dependencies are the tests'), so the test itself, later, only runs.
  step "nested Xen smoke test: building xen-smoke"
  cargo xtask xen smoke --xen 4.17 --profile dev --build-only >/dev/null
fi
shm_before=$(ls /dev/shm 2>/dev/null | grep '^vmi-guest-' | sort || true)
step "tests"
if command -v cargo-nextest >/dev/null; then
  cargo nextest run --workspace --all-features --no-fail-fast
else
  cargo test --workspace --all-features --no-fail-fast
fi
# The nested Xen smoke test mostly waits on one emulated machine: it runs beside the
# Python tests and the doc tests, and its log is printed when it ends.
xen_pid=
if [ "${VMI_XEN_SMOKE:-1}" = 1 ]; then
  step "nested Xen smoke test started (Xen 4.17 under QEMU TCG: our driver on PV and PVH guests)"
  xen_log=target/xen-smoke.log
  # Its own process group, ended with everything in it if this script stops early.
  setsid cargo xtask xen smoke --xen 4.17 --prebuilt >"$xen_log" 2>&1 &
  xen_pid=$!
  trap 'kill -- -"$xen_pid" 2>/dev/null || true; kill "$fetch_pid" 2>/dev/null || true' EXIT
fi
step "Python package (pytest against the live test guest and its dump)"
target/venv/bin/python -m pytest -q crates/vmi-python/tests
step "doc tests"
cargo test --workspace --all-features --doc
step "nested Xen smoke test (its log)"
if [ -n "$xen_pid" ]; then
  xen_rc=0; wait "$xen_pid" || xen_rc=$?
  cat "$xen_log" >&2
  if [ "$xen_rc" != 0 ]; then echo "error: the nested Xen smoke test failed ($xen_rc)" >&2; exit 1; fi
else
  echo "SKIPPED: VMI_XEN_SMOKE=0" >&2
fi
# Nothing may be left behind by the tests (guests started outside this run don't count).
left=$(comm -13 <(echo "$shm_before") <(ls /dev/shm 2>/dev/null | grep '^vmi-guest-' | sort) || true)
if [ -n "$left" ]; then
  echo "error: tests left guest RAM files in /dev/shm:" >&2; echo "$left" >&2; exit 1
fi
echo "all tests passed in $SECONDS s ($(( $(idle) - idle0 )) s of CPU idle)" >&2
