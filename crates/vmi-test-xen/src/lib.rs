//! The nested-Xen smoke test's dom0 side lives in the `xen-smoke` binary of this crate
//! (feature `smoke`, which builds the real libxen bindings of `vmi-driver-xen`). It is a
//! test rig, not a library: `cargo xtask xen smoke` builds it against the headers of the
//! Xen under test and runs it in a nested dom0, where it checks the driver and the Linux
//! OS layer against a real domU. Drivers know no OS; this rig is where the two meet.

#![forbid(unsafe_code)]
