//! Opening a target by name and recognising its OS, once for every front end: the `vmi`
//! command and the Python package call the same functions, so a target spec means the
//! same thing and a failure reads the same in both.
//!
//! ```text
//! qemu:/path/qmp.sock   a running QEMU/KVM, attached by its QMP socket alone
//! libvirt:NAME          a domain run by libvirt (libvirt's default URI), through libvirt
//! libvirt+URI:NAME      the same at a libvirt URI: libvirt+qemu:///system:NAME
//! xen:3                 a Xen domain by id, from dom0 (feature `xen`)
//! guest.elf             a dump file (raw, ELF, kdump, LiME, Windows crash dump; detected)
//! ```
//!
//! [`open`] picks and attaches the driver; [`detect_os`] finds the kernel (Linux first,
//! cheap when a dump carries VMCOREINFO, then Windows) and loads its profile; [`info`] is
//! what `vmi info` shows. Errors are [`TargetError`]s whose `Display` is one sentence and
//! whose `source()` chain ends at the root cause (a front end prints "what: root cause").
//!
//! | feature | brings |
//! |---|---|
//! | (always) | `qemu:` targets and dump files; Linux and Windows OS layers |
//! | `xen` | `xen:<domid>` targets through the real libxen (needs libxen-dev, libclang) |
//!
//! # Example
//!
//! ```
//! let err = match vmi_target::open("/nonexistent/guest.elf") {
//!     Err(e) => e,
//!     Ok(_) => unreachable!("no such file"),
//! };
//! assert_eq!(
//!     err.to_string(),
//!     "target /nonexistent/guest.elf does not exist (give a dump file or qemu:<QMP socket path>)"
//! );
//! ```

#![forbid(unsafe_code)]

use std::error::Error as _;
use std::path::{Path, PathBuf};

use vmi_arch_amd64::{Amd64, Registers};
use vmi_core::{
    OsAttribute, OsValue, VcpuId, VmiCore, VmiDriver, VmiError, VmiOs, VmiQueryRegisters, VmiRead,
};
use vmi_driver_dump::DumpDriver;
use vmi_driver_qemu::QemuDriver;
use vmi_os_linux::LinuxOs;
use vmi_os_windows::WindowsOs;
use vmi_profile::Profile;

/// The Xen driver of `xen:` targets.
#[cfg(feature = "xen")]
pub type XenDriver = vmi_driver_xen::XenDriver<vmi_driver_xen::ffi::LibXen>;

/// An opened target.
#[non_exhaustive]
pub enum Target {
    /// A running QEMU.
    Qemu(VmiCore<QemuDriver>),
    /// A memory dump.
    Dump(VmiCore<DumpDriver>),
    /// A Xen domain, from dom0 (feature `xen`).
    #[cfg(feature = "xen")]
    Xen(VmiCore<XenDriver>),
}

impl Target {
    /// Whether the target is a running VM (as opposed to a dump).
    pub fn is_live(&self) -> bool {
        !matches!(self, Target::Dump(_))
    }

    /// The VMCOREINFO text a dump carries in a note, if any (it spares a memory scan).
    pub fn vmcoreinfo(&self) -> Option<&str> {
        match self {
            Target::Dump(core) => core.driver().vmcoreinfo(),
            _ => None,
        }
    }
}

/// Why a target could not be opened or its OS not recognised.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// The QEMU driver could not attach to the QMP socket.
    #[error("cannot attach to QEMU at {socket}")]
    Attach {
        /// The socket path.
        socket: String,
        /// Why.
        #[source]
        source: VmiError,
    },
    /// The QEMU driver could not attach to a libvirt domain.
    #[error("cannot attach to libvirt domain {domain} ({})", uri.as_deref().unwrap_or("libvirt's default URI"))]
    LibvirtAttach {
        /// The domain name.
        domain: String,
        /// The libvirt URI (`None`: libvirt's default).
        uri: Option<String>,
        /// Why.
        #[source]
        source: VmiError,
    },
    /// A `libvirt` spec that names no domain.
    #[error("{spec}: give libvirt:NAME or libvirt+URI:NAME (e.g. libvirt+qemu:///system:NAME)")]
    BadLibvirt {
        /// The spec as given.
        spec: String,
    },
    /// The target spec names no existing file.
    #[error("target {spec} does not exist (give a dump file or qemu:<QMP socket path>)")]
    NoSuchTarget {
        /// The spec as given.
        spec: String,
    },
    /// The dump driver could not open the file.
    #[error("cannot open dump {spec}")]
    Dump {
        /// The path as given.
        spec: String,
        /// Why.
        #[source]
        source: VmiError,
    },
    /// `xen:` followed by something that is not a domain id.
    #[error("xen:{domain}: give the domain id (a number, as `xl list` shows it)")]
    BadDomain {
        /// What followed `xen:`.
        domain: String,
    },
    /// libxen could not be opened.
    #[error("cannot open libxen (run in dom0 as root)")]
    LibXen {
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The Xen driver could not attach to the domain.
    #[error("cannot attach to Xen domain {domid}")]
    XenAttach {
        /// The domain id.
        domid: u32,
        /// Why.
        #[source]
        source: VmiError,
    },
    /// Built without the Xen driver.
    #[error(
        "xen targets are not available: this vmi was built without a Xen driver \
         (cargo install --path crates/vmi-cli --features xen, with libxen-dev and libclang)"
    )]
    XenUnavailable,
    /// A Linux kernel was found (its VMCOREINFO validated) but its profile or offsets
    /// could not be loaded.
    #[error("the Linux kernel of the {kind} target was found but cannot be read")]
    LinuxUnreadable {
        /// The target kind (`qemu`, `dump`...).
        kind: String,
        /// Why.
        #[source]
        source: VmiError,
    },
    /// No Linux kernel was recognised.
    #[error("no Linux kernel recognised in the {kind} target")]
    NotLinux {
        /// The target kind.
        kind: String,
        /// Why.
        #[source]
        source: VmiError,
    },
    /// Neither a Linux nor a Windows kernel was recognised.
    #[error(
        "no Linux or Windows kernel recognised in the {kind} target (Linux: {linux}; Windows: {windows})"
    )]
    NoOs {
        /// The target kind.
        kind: String,
        /// Why not Linux (the root cause).
        linux: String,
        /// Why not Windows (the root cause).
        windows: String,
    },
    /// A Windows kernel was found, and no profile source is configured.
    #[error(
        "found the Windows kernel {pdb} {guid}, but no profile: give --profile <ISF or PDB> or \
         --symbol-path srv*CACHE*https://msdl.microsoft.com/download/symbols"
    )]
    NoWindowsProfile {
        /// The kernel's PDB name.
        pdb: String,
        /// Its GUID and age (`<GUID>-<age>`).
        guid: String,
    },
    /// Any other failure of the framework (the core could not start, the configured
    /// Windows profile could not be loaded).
    #[error(transparent)]
    Vmi(#[from] VmiError),
}

impl TargetError {
    /// The innermost cause of this error (itself when it has none).
    pub fn root_cause(&self) -> String {
        let mut e: &dyn std::error::Error = self;
        while let Some(s) = e.source() {
            e = s;
        }
        e.to_string()
    }

    /// The whole chain, `what: why: root cause`.
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut e = self.source();
        while let Some(s) = e {
            out.push_str(": ");
            out.push_str(&s.to_string());
            e = s.source();
        }
        out
    }

    /// Whether a Linux kernel was found: the profile or the offsets are what failed, so
    /// no other OS is worth trying.
    pub fn linux_found(&self) -> bool {
        matches!(self, TargetError::LinuxUnreadable { .. })
    }
}

/// Splits a `libvirt:NAME` or `libvirt+URI:NAME` spec into the URI (`None`: libvirt's
/// default) and the domain name; `None` when `spec` is not a libvirt spec.
///
/// The name is what follows the **last** `:`, so a URI may hold colons
/// (`libvirt+qemu+ssh://host:22/system:NAME`) and a name may not: a domain whose name
/// holds one is reached with `libvirt:NAME` and `LIBVIRT_DEFAULT_URI`.
///
/// ```
/// use vmi_target::parse_libvirt;
/// fn ok(spec: &str) -> Option<(Option<&str>, &str)> {
///     parse_libvirt(spec).and_then(Result::ok)
/// }
/// assert_eq!(ok("libvirt:web1"), Some((None, "web1")));
/// assert_eq!(ok("libvirt+qemu:///system:web1"), Some((Some("qemu:///system"), "web1")));
/// assert_eq!(
///     ok("libvirt+qemu+ssh://host:22/system:web1"),
///     Some((Some("qemu+ssh://host:22/system"), "web1"))
/// );
/// assert_eq!(ok("libvirt:a:b"), Some((None, "a:b")));
/// assert!(parse_libvirt("libvirt+qemu:///system").unwrap().is_err());
/// assert!(parse_libvirt("libvirt:").unwrap().is_err());
/// assert!(parse_libvirt("qemu:/run/qmp.sock").is_none());
/// ```
pub fn parse_libvirt(spec: &str) -> Option<Result<(Option<&str>, &str), TargetError>> {
    let bad = || {
        Err(TargetError::BadLibvirt {
            spec: spec.to_owned(),
        })
    };
    if let Some(name) = spec.strip_prefix("libvirt:") {
        return Some(if name.is_empty() {
            bad()
        } else {
            Ok((None, name))
        });
    }
    let rest = spec.strip_prefix("libvirt+")?;
    Some(match rest.rsplit_once(':') {
        // The last colon must come after the URI's scheme and path: `qemu:///system`
        // alone ends in a path, not in a name.
        Some((uri, name)) if !name.is_empty() && !name.contains('/') && uri.contains("://") => {
            Ok((Some(uri), name))
        }
        _ => bad(),
    })
}

/// Opens `spec`: `qemu:<socket>`, `libvirt:<name>`, `libvirt+<uri>:<name>`,
/// `xen:<domid>`, or a dump path.
pub fn open(spec: &str) -> Result<Target, TargetError> {
    if let Some(parsed) = parse_libvirt(spec) {
        let (uri, domain) = parsed?;
        let driver =
            QemuDriver::attach_libvirt(uri, domain, vmi_driver_qemu::AttachOptions::default())
                .map_err(|source| TargetError::LibvirtAttach {
                    domain: domain.to_owned(),
                    uri: uri.map(str::to_owned),
                    source,
                })?;
        return Ok(Target::Qemu(VmiCore::new(driver)?));
    }
    if let Some(socket) = spec.strip_prefix("qemu:") {
        let driver = QemuDriver::attach(socket).map_err(|source| TargetError::Attach {
            socket: socket.to_owned(),
            source,
        })?;
        return Ok(Target::Qemu(VmiCore::new(driver)?));
    }
    if let Some(domain) = spec.strip_prefix("xen:") {
        return open_xen(domain);
    }
    let path = Path::new(spec);
    if !path.exists() {
        return Err(TargetError::NoSuchTarget {
            spec: spec.to_owned(),
        });
    }
    let driver = DumpDriver::open(path).map_err(|source| TargetError::Dump {
        spec: spec.to_owned(),
        source,
    })?;
    Ok(Target::Dump(VmiCore::new(driver)?))
}

/// Opens the Xen domain with id `domain` through libxen.
#[cfg(feature = "xen")]
fn open_xen(domain: &str) -> Result<Target, TargetError> {
    use vmi_driver_xen::ffi::LibXen;
    let domid: u32 = domain.parse().map_err(|_| TargetError::BadDomain {
        domain: domain.to_owned(),
    })?;
    let xen = LibXen::open().map_err(|e| TargetError::LibXen {
        source: Box::new(e),
    })?;
    let driver = vmi_driver_xen::XenDriver::new(xen, domid)
        .map_err(|source| TargetError::XenAttach { domid, source })?;
    Ok(Target::Xen(VmiCore::new(driver)?))
}

/// Without the `xen` feature: says how to build a `vmi` that has it.
#[cfg(not(feature = "xen"))]
fn open_xen(_domain: &str) -> Result<Target, TargetError> {
    Err(TargetError::XenUnavailable)
}

/// Where the OS layers take their profile from, when not from guest memory alone.
#[derive(Clone, Debug, Default)]
pub struct OsOptions {
    /// Kernel image for types (vmlinux with .BTF or a vmlinuz bzImage).
    pub kernel: Option<PathBuf>,
    /// System.map for symbols.
    pub system_map: Option<PathBuf>,
    /// A Volatility 3 ISF (Linux or Windows), or a PDB (Windows).
    pub profile: Option<PathBuf>,
    /// Windows symbol path (`srv*CACHE*URL`).
    pub symbol_path: Option<String>,
    /// Do not read or write the on-disk profile cache.
    pub no_cache: bool,
}

/// The OS layer of a target, recognised at run time.
#[non_exhaustive]
#[allow(
    clippy::large_enum_variant,
    reason = "one per opened target, built once and never copied in a loop"
)]
pub enum Os {
    /// Linux.
    Linux(LinuxOs),
    /// Windows x64.
    Windows(WindowsOs),
}

impl Os {
    /// The profile (symbols and types) in use.
    pub fn profile(&self) -> &Profile {
        match self {
            Os::Linux(os) => os.profile(),
            Os::Windows(os) => os.profile(),
        }
    }

    /// The OS layer behind the common trait.
    pub fn as_dyn<D: VmiRead<Architecture = Amd64>>(&self) -> &dyn VmiOs<D> {
        match self {
            Os::Linux(os) => os,
            Os::Windows(os) => os,
        }
    }

    /// The OS layer behind the common trait, owned.
    pub fn into_dyn<D: VmiRead<Architecture = Amd64> + 'static>(self) -> Box<dyn VmiOs<D>> {
        match self {
            Os::Linux(os) => Box::new(os),
            Os::Windows(os) => Box::new(os),
        }
    }
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

/// Finds the Linux kernel in `core` and builds its OS layer; `vmcoreinfo` is the text a
/// dump carries ([`Target::vmcoreinfo`]).
pub fn linux<D>(
    core: &VmiCore<D>,
    options: &OsOptions,
    vmcoreinfo: Option<&str>,
) -> Result<LinuxOs, TargetError>
where
    D: VmiRead<Architecture = Amd64> + VmiQueryRegisters,
{
    let mut builder = LinuxOs::builder().registers(all_registers(core));
    if let Some(text) = vmcoreinfo {
        builder = builder.vmcoreinfo(text.as_bytes().to_vec());
    }
    if let Some(k) = &options.kernel {
        builder = builder.vmlinux(k);
    }
    if let Some(m) = &options.system_map {
        builder = builder.system_map(m);
    }
    if let Some(p) = &options.profile {
        builder = builder.isf(p);
    }
    if options.no_cache {
        builder = builder.no_cache();
    }
    builder.build(core).map_err(|source| {
        let kind = core.info().kind.to_string();
        if matches!(source, VmiError::Os { os: "linux", .. }) {
            TargetError::LinuxUnreadable { kind, source }
        } else {
            TargetError::NotLinux { kind, source }
        }
    })
}

/// Why Windows was not recognised.
enum NotWindows {
    /// No Windows kernel in the target.
    NoKernel(VmiError),
    /// A Windows kernel, but no profile for it.
    NoProfile(TargetError),
}

/// The target's OS layer: Linux, else Windows; a failure says why neither was recognised.
pub fn detect_os<D>(
    core: &VmiCore<D>,
    options: &OsOptions,
    vmcoreinfo: Option<&str>,
) -> Result<Os, TargetError>
where
    D: VmiRead<Architecture = Amd64> + VmiQueryRegisters,
{
    let linux_error = match linux(core, options, vmcoreinfo) {
        Ok(os) => return Ok(Os::Linux(os)),
        // The kernel was found, its profile was not: that error, not a Windows attempt.
        Err(e) if e.linux_found() => return Err(e),
        Err(e) => e,
    };
    match windows(core, options) {
        Ok(os) => Ok(Os::Windows(os)),
        Err(NotWindows::NoKernel(w)) => {
            let w = TargetError::Vmi(w);
            Err(TargetError::NoOs {
                kind: core.info().kind.to_string(),
                linux: linux_error.root_cause(),
                windows: w.root_cause(),
            })
        }
        Err(NotWindows::NoProfile(e)) => Err(e),
    }
}

/// Finds a Windows kernel (from vCPU registers when the target has them, else by
/// scanning memory) and loads its profile: `profile` (an ISF file or directory, or a
/// PDB), else `symbol_path` / `_NT_SYMBOL_PATH` (an ISF directory, or a `srv*CACHE*URL`
/// symbol path from which the PDB is downloaded), else the caches.
fn windows<D>(core: &VmiCore<D>, options: &OsOptions) -> Result<WindowsOs, NotWindows>
where
    D: VmiRead<Architecture = Amd64> + VmiQueryRegisters,
{
    let mut builder = WindowsOs::builder().registers(all_registers(core));
    if let Some(p) = &options.profile {
        builder = if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("pdb")) {
            builder.pdb(p)
        } else {
            builder.isf(p)
        };
    }
    if let Some(sp) = &options.symbol_path {
        builder = builder.symbol_path(sp.clone());
    }
    if options.no_cache {
        builder = builder.no_cache();
    }
    let kernel = builder.find_kernel(core).map_err(NotWindows::NoKernel)?;
    let cv = kernel.codeview.clone();
    let configured = builder.has_profile_source();
    builder.kernel(kernel).build(core).map_err(|e| {
        NotWindows::NoProfile(if configured {
            TargetError::Vmi(e)
        } else {
            let guid: String = cv.guid.iter().map(|b| format!("{b:02X}")).collect();
            TargetError::NoWindowsProfile {
                pdb: cv.pdb_name.clone(),
                guid: format!("{guid}-{}", cv.age),
            }
        })
    })
}

/// What `vmi info` shows, in display order: the target (`target`, `live`, `arch`,
/// `vcpus`, `registers`, `max_physical_address`), `os`, then the OS layer's kernel facts;
/// when the OS was not recognised, `paging` and `os_error` (the whole cause chain).
pub fn info<D>(
    core: &VmiCore<D>,
    live: bool,
    os: Result<&dyn VmiOs<D>, &TargetError>,
) -> Vec<OsAttribute>
where
    D: VmiRead<Architecture = Amd64> + VmiQueryRegisters,
{
    let info = core.info();
    let registers = !all_registers(core).is_empty();
    let max = info
        .max_gfn
        .0
        .checked_add(1)
        .and_then(|n| n.checked_mul(4096));
    let mut facts = vec![
        OsAttribute::new("target", OsValue::Text(info.kind.to_string())),
        OsAttribute::new("live", OsValue::Bool(live)),
        OsAttribute::new("arch", OsValue::Text("amd64".into())),
        OsAttribute::new("vcpus", OsValue::Number(u64::from(info.vcpus))),
        OsAttribute::new("registers", OsValue::Bool(registers)),
        OsAttribute::new(
            "max_physical_address",
            max.map_or(OsValue::Null, OsValue::Hex),
        ),
    ];
    match os {
        Ok(os) => {
            facts.push(OsAttribute::new("os", OsValue::Text(os.name().into())));
            facts.extend(os.kernel_facts(core));
        }
        Err(e) => {
            facts.push(OsAttribute::new("os", OsValue::Null));
            facts.push(OsAttribute::new(
                "paging",
                OsValue::Text(format!("{:?}", core.paging_mode())),
            ));
            facts.push(OsAttribute::new("os_error", OsValue::Text(e.chain())));
        }
    }
    facts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_dump_and_absent_qemu_read_as_the_cli_prints_them() {
        let e = open("/nonexistent/x.elf").err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some(
                "target /nonexistent/x.elf does not exist (give a dump file or qemu:<QMP socket path>)"
            )
        );
        let e = open("qemu:/nonexistent/qmp.sock").err();
        assert!(matches!(e, Some(TargetError::Attach { .. })));
        let e = e.map(|e| e.chain()).unwrap_or_default();
        assert!(
            e.starts_with("cannot attach to QEMU at /nonexistent/qmp.sock: "),
            "{e}"
        );
    }
}
