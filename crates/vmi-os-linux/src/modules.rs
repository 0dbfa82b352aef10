//! Loaded kernel modules (the `modules` list).

use vmi_arch_amd64::Amd64;
use vmi_core::{Va, VmiCore, VmiError, VmiRead};

use crate::kmem::{fixed_cstr, malformed};
use crate::walk::walk_list;
use crate::{LinuxOs, Skipped};

/// Most `mod_mem_type` values accepted (the kernel has 7 since 6.4).
const MAX_MOD_MEM: u64 = 16;

/// `module.state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ModuleState {
    /// Normal state (`Live` in `/proc/modules`).
    Live,
    /// Being initialised (`Loading`).
    Coming,
    /// Being removed (`Unloading`).
    Going,
    /// Still being set up.
    Unformed,
    /// A value the kernel does not define.
    Unknown(u32),
}

impl ModuleState {
    /// The word `/proc/modules` shows.
    pub fn proc_name(self) -> &'static str {
        match self {
            Self::Live => "Live",
            Self::Coming => "Loading",
            Self::Going => "Unloading",
            Self::Unformed | Self::Unknown(_) => "Unknown",
        }
    }
}

/// One loaded module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinuxModule {
    /// The `struct module`.
    pub module: Va,
    /// Name.
    pub name: String,
    /// Base of its text (`mem[MOD_TEXT].base` on 6.4+, `core_layout.base` before), as
    /// `/proc/modules` shows.
    pub base: Va,
    /// Total size (sum of its memory areas), as `/proc/modules` shows.
    pub size: u64,
    /// State.
    pub state: ModuleState,
}

/// The loaded modules and what could not be read.
#[derive(Debug, Default)]
pub struct ModuleList {
    /// Modules in list order (newest first).
    pub modules: Vec<LinuxModule>,
    /// Skipped objects (`struct module` or the list node whose link broke) and why.
    pub skipped: Skipped,
}

impl LinuxOs {
    /// The loaded modules, in list order (newest first), and what could not be read.
    pub fn module_list<D: VmiRead<Architecture = Amd64>>(
        &self,
        core: &VmiCore<D>,
    ) -> Result<ModuleList, VmiError> {
        let o = self
            .offsets
            .module
            .as_ref()
            .map_err(|e| crate::builder::os_error("modules", e.clone()))?;
        let k = self.kmem(core);
        let walk = walk_list(&k, Va(o.modules), "module.list", self.limits.max_list);
        let mut skipped = walk.errors;
        let mut out = Vec::new();
        let name_len = o.name.size.unwrap_or(56).min(256) as usize;
        for node in walk.nodes {
            let m = node - o.list;
            let read = || -> Result<LinuxModule, VmiError> {
                let name = fixed_cstr(&k.vec(m + o.name.offset, name_len)?);
                let raw_state = k.u32(m + o.state)?;
                let s = i64::from(raw_state);
                let state = if s == o.live {
                    ModuleState::Live
                } else if s == o.coming {
                    ModuleState::Coming
                } else if s == o.going {
                    ModuleState::Going
                } else if s == o.unformed {
                    ModuleState::Unformed
                } else {
                    ModuleState::Unknown(raw_state)
                };
                let (base, size) = if let (Some(mem), Some(msz), Some(mb), Some(ms), Some(text)) =
                    (o.mem, o.mem_size, o.mm_base, o.mm_size, o.mod_text)
                {
                    // Enum values and sizes come from the profile (guest BTF): checked.
                    let text = u64::try_from(text)
                        .ok()
                        .filter(|&t| t < MAX_MOD_MEM)
                        .ok_or_else(|| {
                            malformed("enum mod_mem_type", m.0, format!("MOD_TEXT = {text}"))
                        })?;
                    let n = o
                        .mod_mem_num
                        .map_or(text + 1, |n| n.clamp(1, MAX_MOD_MEM as i64) as u64);
                    let slot = |i: u64, field: u64| {
                        i.checked_mul(msz)
                            .and_then(|x| x.checked_add(mem))
                            .and_then(|x| x.checked_add(field))
                            .map(|x| m + x)
                            .ok_or_else(|| {
                                malformed(
                                    "module.mem",
                                    m.0,
                                    format!("entry {i} of {msz} bytes overflows"),
                                )
                            })
                    };
                    let base = k.u64(slot(text, mb)?)?;
                    let mut size = 0u64;
                    for i in 0..n {
                        size = size.saturating_add(u64::from(k.u32(slot(i, ms)?)?));
                    }
                    (base, size)
                } else if let (Some(core_l), Some(init_l), Some(lb), Some(ls)) =
                    (o.core_layout, o.init_layout, o.ml_base, o.ml_size)
                {
                    let base = k.u64(m + core_l + lb)?;
                    let size = u64::from(k.u32(m + core_l + ls)?)
                        .saturating_add(u64::from(k.u32(m + init_l + ls)?));
                    (base, size)
                } else {
                    return Err(VmiError::not_supported(
                        "module layout (neither module.mem nor module.core_layout)",
                        "linux",
                    ));
                };
                Ok(LinuxModule {
                    module: m,
                    name,
                    base: Va(base),
                    size,
                    state,
                })
            };
            match read() {
                Ok(module) => out.push(module),
                Err(e) => skipped.push((m, e)),
            }
        }
        Ok(ModuleList {
            modules: out,
            skipped,
        })
    }
}
