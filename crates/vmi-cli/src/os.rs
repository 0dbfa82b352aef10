//! Recognising the OS of a target, once, at run time: Linux first (cheap when a dump
//! carries VMCOREINFO), then Windows. The commands see only [`VmiOs`].

use anyhow::anyhow;
use vmi_arch_amd64::Amd64;
use vmi_core::{VmiCore, VmiOs, VmiQueryRegisters, VmiRead};
use vmi_os_windows::WindowsOs;
use vmi_os_windows::pe::CodeView;

use crate::{Cli, EXIT_TARGET, Failure, target};

/// The OS layer of a target, chosen at run time.
pub type DynOs<D> = Box<dyn VmiOs<D>>;

/// Why Windows was not recognised.
enum Detect {
    /// No Windows kernel in the target.
    NotWindows(anyhow::Error),
    /// A Windows kernel, but no profile for it.
    NoProfile(anyhow::Error),
}

fn guid_text(cv: &CodeView) -> String {
    let g: String = cv.guid.iter().map(|b| format!("{b:02X}")).collect();
    format!("{g}-{}", cv.age)
}

/// The target's OS layer: Linux, else Windows; a failure says why neither was recognised.
pub fn detect<D>(
    core: &VmiCore<D>,
    cli: &Cli,
    vmcoreinfo: Option<&str>,
) -> Result<DynOs<D>, Failure>
where
    D: VmiRead<Architecture = Amd64> + VmiQueryRegisters + 'static,
{
    let linux = match target::linux(core, cli, vmcoreinfo) {
        Ok(os) => return Ok(Box::new(os)),
        // The kernel was found, its profile was not: that error, not a Windows attempt.
        Err(e)
            if e.error
                .downcast_ref::<vmi_core::VmiError>()
                .is_some_and(target::linux_found) =>
        {
            return Err(e);
        }
        Err(e) => e,
    };
    match windows(core, cli) {
        Ok(os) => Ok(Box::new(os)),
        Err(Detect::NotWindows(w)) => Err(Failure {
            code: EXIT_TARGET,
            error: anyhow!(
                "no Linux or Windows kernel recognised in the {} target (Linux: {}; Windows: {})",
                core.info().kind,
                linux
                    .error
                    .chain()
                    .last()
                    .map(|c| c.to_string())
                    .unwrap_or_default(),
                w.chain().last().map(|c| c.to_string()).unwrap_or_default(),
            ),
        }),
        Err(Detect::NoProfile(e)) => Err(Failure {
            code: EXIT_TARGET,
            error: e,
        }),
    }
}

/// Finds a Windows kernel (from vCPU registers when the target has them, else by
/// scanning memory) and loads its profile: `--profile` (an ISF file or directory, or a
/// PDB), else `--symbol-path` / `_NT_SYMBOL_PATH` (an ISF directory, or a `srv*CACHE*URL`
/// symbol path from which the PDB is downloaded), else the caches.
fn windows<D>(core: &VmiCore<D>, cli: &Cli) -> Result<WindowsOs, Detect>
where
    D: VmiRead<Architecture = Amd64> + VmiQueryRegisters,
{
    let mut builder = WindowsOs::builder().registers(target::all_registers(core));
    if let Some(p) = &cli.profile {
        builder = if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("pdb")) {
            builder.pdb(p)
        } else {
            builder.isf(p)
        };
    }
    if let Some(sp) = &cli.symbol_path {
        builder = builder.symbol_path(sp.clone());
    }
    if cli.no_cache {
        builder = builder.no_cache();
    }
    let kernel = builder
        .find_kernel(core)
        .map_err(|e| Detect::NotWindows(e.into()))?;
    let cv = kernel.codeview.clone();
    let configured = builder.has_profile_source();
    builder.kernel(kernel).build(core).map_err(|e| {
        Detect::NoProfile(if configured {
            anyhow!(e)
        } else {
            anyhow!(
                "found the Windows kernel {} {}, but no profile: give --profile <ISF or PDB> or \
                 --symbol-path srv*CACHE*https://msdl.microsoft.com/download/symbols",
                cv.pdb_name,
                guid_text(&cv)
            )
        })
    })
}
