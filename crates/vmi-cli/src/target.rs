//! Opening a target: a running QEMU by its QMP socket, a Xen domain, or a dump file
//! (`vmi_target`, shared with the Python package), with the CLI's exit code and spinner.

use anyhow::anyhow;
use vmi_arch_amd64::Amd64;
use vmi_core::{VmiCore, VmiQueryRegisters, VmiRead};
use vmi_os_linux::LinuxOs;
use vmi_target::{OsOptions, TargetError};
pub use vmi_target::{Target, all_registers};

use crate::{Cli, EXIT_TARGET, Failure};

/// The failure of a target that cannot be opened or understood.
pub fn target_failure(error: TargetError) -> Failure {
    Failure {
        code: EXIT_TARGET,
        error: anyhow!(error),
    }
}

/// Opens `spec`: `qemu:<socket>`, `libvirt[+URI]:<name>`, `xen:<domid>`, or a dump path.
pub fn open(spec: &str) -> Result<Target, Failure> {
    vmi_target::open(spec).map_err(target_failure)
}

/// Where the OS layers take their profile from: the global options.
pub fn os_options(cli: &Cli) -> OsOptions {
    OsOptions {
        kernel: cli.kernel.clone(),
        system_map: cli.system_map.clone(),
        profile: cli.profile.clone(),
        symbol_path: cli.symbol_path.clone(),
        no_cache: cli.no_cache,
    }
}

/// Runs `f` (kernel discovery, which reads memory and on a first run builds the profile)
/// under a spinner on a terminal (indicatif draws nothing when stderr is not one).
pub fn with_spinner<T>(f: impl FnOnce() -> T) -> T {
    let spinner = indicatif::ProgressBar::new_spinner()
        .with_message("finding the kernel, its symbols and types in guest memory");
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    let result = f();
    spinner.finish_and_clear();
    result
}

/// Finds the Linux kernel in `core` and builds its OS layer.
pub fn linux<D>(core: &VmiCore<D>, cli: &Cli, vmcoreinfo: Option<&str>) -> Result<LinuxOs, Failure>
where
    D: VmiRead<Architecture = Amd64> + VmiQueryRegisters,
{
    with_spinner(|| vmi_target::linux(core, &os_options(cli), vmcoreinfo)).map_err(target_failure)
}
