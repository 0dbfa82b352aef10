//! Opening a target: a running QEMU by its QMP socket, or a dump file.

use std::path::Path;

use anyhow::anyhow;
use vmi_arch_amd64::{Amd64, Registers};
use vmi_core::{VcpuId, VmiCore, VmiDriver, VmiError, VmiQueryRegisters, VmiRead};
use vmi_driver_dump::DumpDriver;
use vmi_driver_qemu::QemuDriver;
use vmi_os_linux::LinuxOs;

use crate::{Cli, EXIT_TARGET, Failure};

/// An opened target.
pub enum Target {
    /// A running QEMU.
    Qemu(VmiCore<QemuDriver>),
    /// A memory dump.
    Dump(VmiCore<DumpDriver>),
    /// A Xen domain, from dom0 (feature `xen`).
    #[cfg(feature = "xen")]
    Xen(VmiCore<vmi_driver_xen::XenDriver<vmi_driver_xen::ffi::LibXen>>),
}

fn target_failure(error: anyhow::Error) -> Failure {
    Failure {
        code: EXIT_TARGET,
        error,
    }
}

/// Opens `spec`: `qemu:<socket>`, `xen:<domid>`, or a dump path.
pub fn open(spec: &str) -> Result<Target, Failure> {
    if let Some(socket) = spec.strip_prefix("qemu:") {
        let driver = QemuDriver::attach(socket).map_err(|e| {
            target_failure(anyhow!(e).context(format!("cannot attach to QEMU at {socket}")))
        })?;
        let core = VmiCore::new(driver).map_err(|e| target_failure(e.into()))?;
        return Ok(Target::Qemu(core));
    }
    if let Some(domain) = spec.strip_prefix("xen:") {
        return open_xen(domain);
    }
    let path = Path::new(spec);
    if !path.exists() {
        return Err(target_failure(anyhow!(
            "target {spec} does not exist (give a dump file or qemu:<QMP socket path>)"
        )));
    }
    let driver = DumpDriver::open(path)
        .map_err(|e| target_failure(anyhow!(e).context(format!("cannot open dump {spec}"))))?;
    let core = VmiCore::new(driver).map_err(|e| target_failure(e.into()))?;
    Ok(Target::Dump(core))
}

/// Opens the Xen domain with id `domain` through libxen.
#[cfg(feature = "xen")]
fn open_xen(domain: &str) -> Result<Target, Failure> {
    use vmi_driver_xen::{XenDriver, ffi::LibXen};
    let domid: u32 = domain.parse().map_err(|_| {
        target_failure(anyhow!(
            "xen:{domain}: give the domain id (a number, as `xl list` shows it)"
        ))
    })?;
    let xen = LibXen::open().map_err(|e| {
        target_failure(anyhow!(e).context("cannot open libxen (run in dom0 as root)"))
    })?;
    let driver = XenDriver::new(xen, domid).map_err(|e| {
        target_failure(anyhow!(e).context(format!("cannot attach to Xen domain {domid}")))
    })?;
    let core = VmiCore::new(driver).map_err(|e| target_failure(e.into()))?;
    Ok(Target::Xen(core))
}

/// Without the `xen` feature: says how to build a `vmi` that has it.
#[cfg(not(feature = "xen"))]
fn open_xen(_domain: &str) -> Result<Target, Failure> {
    Err(target_failure(anyhow!(
        "xen targets are not available: this vmi was built without a Xen driver \
         (cargo install --path crates/vmi-cli --features xen, with libxen-dev and libclang)"
    )))
}

/// Every vCPU's registers, or none if the target has no CPU state.
pub fn all_registers<D>(core: &VmiCore<D>) -> Vec<Registers>
where
    D: VmiDriver<Architecture = Amd64> + VmiQueryRegisters,
{
    (0..core.info().vcpus)
        .map(|i| core.registers(VcpuId(i)))
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_default()
}

/// Finds the Linux kernel in `core` and builds its OS layer.
pub fn linux<D>(core: &VmiCore<D>, cli: &Cli, vmcoreinfo: Option<&str>) -> Result<LinuxOs, Failure>
where
    D: VmiRead<Architecture = Amd64> + VmiQueryRegisters,
{
    let mut builder = LinuxOs::builder().registers(all_registers(core));
    if let Some(text) = vmcoreinfo {
        builder = builder.vmcoreinfo(text.as_bytes().to_vec());
    }
    if let Some(k) = &cli.kernel {
        builder = builder.vmlinux(k);
    }
    if let Some(m) = &cli.system_map {
        builder = builder.system_map(m);
    }
    if let Some(p) = &cli.profile {
        builder = builder.isf(p);
    }
    if cli.no_cache {
        builder = builder.no_cache();
    }
    // Discovery reads memory and, on a first run, builds the profile: show a spinner on a
    // terminal (indicatif draws nothing when stderr is not one).
    let spinner = indicatif::ProgressBar::new_spinner()
        .with_message("finding the kernel, its symbols and types in guest memory");
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    let result = builder.build(core);
    spinner.finish_and_clear();
    result.map_err(|e| {
        let kind = core.info().kind;
        let context = if linux_found(&e) {
            format!("the Linux kernel of the {kind} target was found but cannot be read")
        } else {
            format!("no Linux kernel recognised in the {kind} target")
        };
        target_failure(anyhow!(e).context(context))
    })
}

/// Whether a [`LinuxOs`] build error comes after the kernel was found (its VMCOREINFO
/// validated): the profile or the offsets are what failed, so no other OS is worth trying.
pub fn linux_found(e: &VmiError) -> bool {
    matches!(e, VmiError::Os { os: "linux", .. })
}
