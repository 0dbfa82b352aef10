//! Recognising the OS of a target, once, at run time (`vmi_target::detect_os`: Linux
//! first, then Windows). The commands see only [`VmiOs`].

use vmi_arch_amd64::Amd64;
use vmi_core::{VmiCore, VmiOs, VmiQueryRegisters, VmiRead};

use crate::target::{os_options, target_failure, with_spinner};
use crate::{Cli, Failure};

/// The OS layer of a target, chosen at run time.
pub type DynOs<D> = Box<dyn VmiOs<D>>;

/// The target's OS layer: Linux, else Windows; a failure says why neither was recognised.
pub fn detect<D>(
    core: &VmiCore<D>,
    cli: &Cli,
    vmcoreinfo: Option<&str>,
) -> Result<DynOs<D>, Failure>
where
    D: VmiRead<Architecture = Amd64> + VmiQueryRegisters + 'static,
{
    with_spinner(|| vmi_target::detect_os(core, &os_options(cli), vmcoreinfo))
        .map(|os| os.into_dyn())
        .map_err(target_failure)
}
