//! Shared helpers: build an image, open it, compare the reader with the manifest.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use vmi_core::{Pa, Va, VmiCore, VmiRead};
use vmi_os_windows::{
    LdrList, NotPresent, WindowsError, WindowsOs, find_kernel, find_kernel_from_registers,
    profile_from_isf_dir, windows_error,
};
use vmi_profile::Profile;
use vmi_test_windows::{GuestImage, GuestSpec, ImageDriver, Manifest, Options, build, load_isf};

/// The product profile for a build, loaded once per test binary.
pub fn profile(key: &str, cv: &vmi_os_windows::pe::CodeView) -> Arc<Profile> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<Profile>>>> = OnceLock::new();
    let c = CACHE.get_or_init(Mutex::default);
    if let Some(p) = c.lock().unwrap().get(key) {
        return Arc::clone(p);
    }
    let p = Arc::new(profile_from_isf_dir(&vmi_test_windows::isf_dir(), cv).unwrap());
    c.lock().unwrap().insert(key.to_owned(), Arc::clone(&p));
    p
}

pub fn image(key: &str, options: Options) -> GuestImage {
    let isf = load_isf(key).unwrap();
    build(&isf, &GuestSpec::with_options(options)).unwrap_or_else(|e| panic!("{key}: {e}"))
}

/// Opens an image: with registers (discovery from LSTAR) or without (memory scans).
pub fn open<D: VmiRead<Architecture = vmi_arch_amd64::Amd64> + vmi_core::VmiQueryRegisters>(
    key: &str,
    core: &VmiCore<D>,
    with_registers: bool,
) -> WindowsOs {
    let kernel = if with_registers {
        let regs = core.registers(vmi_core::VcpuId(0)).unwrap();
        find_kernel_from_registers(core, &regs).unwrap_or_else(|e| panic!("{key}: {e}"))
    } else {
        find_kernel(core).unwrap_or_else(|e| panic!("{key}: {e}"))
    };
    let p = profile(key, &kernel.codeview);
    WindowsOs::from_kernel(core, p, kernel).unwrap()
}

pub fn core_of(img: &GuestImage, registers: bool) -> VmiCore<ImageDriver> {
    VmiCore::new(if registers {
        img.driver()
    } else {
        img.driver_without_registers()
    })
    .unwrap()
}

/// Compares everything the reader reports with the manifest.
pub fn check<D: VmiRead<Architecture = vmi_arch_amd64::Amd64>>(
    m: &Manifest,
    core: &VmiCore<D>,
    os: &WindowsOs,
) {
    let key = &m.isf;
    assert_eq!(os.kernel().base, Va(m.kernel.base), "{key}: kernel base");
    assert_eq!(os.kernel().codeview.isf_key(), m.isf, "{key}: codeview");
    assert_eq!(os.kernel_root(), Pa(m.kernel.dtb), "{key}: kernel DTB");
    assert_eq!(os.header_cookie(), m.kernel.cookie, "{key}: cookie");
    // Kernel image exports.
    let exports = os
        .exports(core, os.kernel_root(), os.kernel().base)
        .unwrap();
    let got: BTreeSet<(String, u64)> = exports
        .iter()
        .map(|e| (e.name.clone(), m.kernel.base + u64::from(e.rva)))
        .collect();
    let want: BTreeSet<(String, u64)> = m
        .kernel
        .exports
        .iter()
        .map(|(n, v)| (n.clone(), *v))
        .collect();
    assert_eq!(got, want, "{key}: exports");
    // Kernel modules.
    let mods = os.kernel_modules(core).unwrap();
    let got: Vec<_> = mods
        .iter()
        .map(|k| (k.name.clone(), k.path.clone(), k.base.0, k.size))
        .collect();
    let want: Vec<_> = m
        .kernel_modules
        .iter()
        .map(|k| (k.name.clone(), k.path.clone(), k.base, k.size))
        .collect();
    assert_eq!(got, want, "{key}: kernel modules");
    for k in m.kernel_modules.iter().filter(|k| k.pdb.is_some()) {
        let cv = os.codeview(core, os.kernel_root(), Va(k.base)).unwrap();
        assert_eq!(Some(&cv.pdb_name), k.pdb.as_ref(), "{key}: driver codeview");
    }
    // Processes.
    let procs = os.win_processes(core).unwrap();
    assert_eq!(procs.len(), m.processes.len(), "{key}: process count");
    for (p, t) in procs.iter().zip(&m.processes) {
        let ctx = format!("{key} pid {}", t.pid);
        assert_eq!(
            (p.pid, p.ppid, p.name.as_str()),
            (t.pid, t.ppid, t.name.as_str()),
            "{ctx}"
        );
        assert_eq!(p.eprocess, Va(t.eprocess), "{ctx}: eprocess");
        assert_eq!(p.dtb, Pa(t.dtb), "{ctx}: dtb");
        assert_eq!(
            p.directory_table_base, t.directory_table_base,
            "{ctx}: raw dtb"
        );
        assert_eq!(p.session, t.session, "{ctx}: session");
        assert_eq!(p.create_time, t.create_time, "{ctx}: create time");
        assert_eq!(p.peb, Va(t.peb), "{ctx}: peb");
        assert!(!p.wow64, "{ctx}: wow64");
        assert_eq!(
            p.active_threads as usize,
            t.threads.len(),
            "{ctx}: active threads"
        );
        if t.user {
            assert_eq!(
                os.image_path(core, p).unwrap(),
                t.image_path.clone().unwrap(),
                "{ctx}: image path"
            );
            assert_eq!(
                os.command_line(core, p).unwrap(),
                t.cmdline.clone().unwrap(),
                "{ctx}: cmdline"
            );
            assert_eq!(os.environment(core, p).unwrap(), t.env, "{ctx}: env");
            assert_eq!(
                os.nt_image_path(core, p).ok(),
                t.nt_image_path,
                "{ctx}: nt path"
            );
            // Loader lists.
            let load = os.user_modules(core, p, LdrList::Load).unwrap();
            let got: Vec<_> = load
                .iter()
                .map(|x| (x.name.clone(), x.path.clone(), x.base.0, x.size, x.entry.0))
                .collect();
            let want: Vec<_> = t
                .modules
                .iter()
                .map(|x| (x.name.clone(), x.path.clone(), x.base, x.size, x.ldr_entry))
                .collect();
            assert_eq!(got, want, "{ctx}: load order");
            let mem: Vec<u64> = os
                .user_modules(core, p, LdrList::Memory)
                .unwrap()
                .iter()
                .map(|x| x.base.0)
                .collect();
            assert_eq!(
                mem,
                t.modules.iter().map(|x| x.base).collect::<Vec<_>>(),
                "{ctx}: memory order"
            );
            let init: Vec<u64> = os
                .user_modules(core, p, LdrList::Init)
                .unwrap()
                .iter()
                .map(|x| x.base.0)
                .collect();
            assert_eq!(
                init,
                t.modules
                    .iter()
                    .filter(|x| x.in_init)
                    .map(|x| x.base)
                    .collect::<Vec<_>>(),
                "{ctx}: init order"
            );
            for x in &t.modules {
                let cv = os.codeview(core, p.dtb, Va(x.base)).unwrap();
                assert_eq!(
                    (cv.pdb_name.as_str(), cv.age),
                    (x.pdb.as_str(), x.age),
                    "{ctx}: module codeview"
                );
                assert_eq!(
                    cv.isf_key(),
                    format!("{}-{}", x.guid, x.age),
                    "{ctx}: module guid"
                );
            }
            // VADs.
            let vads = os.vads(core, p).unwrap();
            let got: Vec<_> = vads
                .iter()
                .map(|v| {
                    (
                        v.start.0,
                        v.end.0,
                        v.protection as u32,
                        v.private,
                        v.tag.clone(),
                        v.file.clone(),
                        v.node.0,
                    )
                })
                .collect();
            let want: Vec<_> = t
                .vads
                .iter()
                .map(|v| {
                    (
                        v.start,
                        v.end,
                        v.protection,
                        v.private,
                        Some(v.tag.clone()),
                        v.file.as_ref().map(|f| f[2..].to_owned()),
                        v.va,
                    )
                })
                .collect();
            assert_eq!(got, want, "{ctx}: vads");
            // Special pages.
            for sp in &t.special_pages {
                let mut buf = [0u8; 32];
                let r = os.read_process_memory(core, p.dtb, Va(sp.va), &mut buf);
                match sp.state.as_str() {
                    "present" | "transition" => {
                        r.unwrap_or_else(|e| panic!("{ctx}: {} page: {e}", sp.state));
                        let marker = sp.marker.as_ref().unwrap();
                        assert_eq!(
                            &buf[..marker.len()],
                            marker.as_bytes(),
                            "{ctx}: {} marker",
                            sp.state
                        );
                    }
                    "pagefile" => match r.as_ref().map_err(windows_error) {
                        Err(Some(WindowsError::NotPresent {
                            state: NotPresent::PageFile { offset, .. },
                            ..
                        })) => {
                            assert_eq!(Some(*offset), sp.pagefile_offset, "{ctx}: pagefile offset")
                        }
                        other => panic!("{ctx}: pagefile page gave {other:?}"),
                    },
                    "demand_zero" => assert!(
                        matches!(
                            r.as_ref().map_err(windows_error),
                            Err(Some(WindowsError::NotPresent {
                                state: NotPresent::DemandZero,
                                ..
                            }))
                        ),
                        "{ctx}: demand-zero page gave {r:?}"
                    ),
                    s => panic!("unknown state {s}"),
                }
            }
        }
        // Threads.
        let th = os.win_threads(core, p).unwrap();
        let got: Vec<_> = th
            .iter()
            .map(|x| {
                (
                    x.tid,
                    x.pid,
                    x.ethread.0,
                    x.teb.0,
                    x.start_address.0,
                    x.win32_start_address.0,
                    x.create_time,
                )
            })
            .collect();
        let want: Vec<_> = t
            .threads
            .iter()
            .map(|x| {
                (
                    x.tid,
                    t.pid,
                    x.ethread,
                    x.teb,
                    x.start,
                    x.win32start,
                    x.create_time,
                )
            })
            .collect();
        assert_eq!(got, want, "{ctx}: threads");
        // Handles.
        let hs = os.handles(core, p).unwrap();
        let got: Vec<_> = hs
            .iter()
            .map(|h| {
                (
                    h.handle,
                    h.type_name.clone().unwrap_or_default(),
                    h.object.0,
                    h.access,
                    h.name.clone().unwrap_or_default(),
                )
            })
            .collect();
        let want: Vec<_> = t
            .handles
            .iter()
            .map(|h| {
                (
                    h.handle,
                    h.type_name.clone(),
                    h.object,
                    h.access,
                    h.name.clone(),
                )
            })
            .collect();
        assert_eq!(got, want, "{ctx}: handles");
        // Token.
        let tok = os.token(core, p).unwrap();
        assert_eq!(tok.address, Va(t.token), "{ctx}: token");
        assert_eq!(
            tok.sids.iter().map(|s| s.sid.clone()).collect::<Vec<_>>(),
            t.sids,
            "{ctx}: sids"
        );
        if t.privileges_present != 0 {
            assert_eq!(
                tok.privileges_present,
                Some(t.privileges_present),
                "{ctx}: privileges"
            );
            assert_eq!(
                tok.privileges_enabled,
                Some(t.privileges_enabled),
                "{ctx}: enabled privileges"
            );
        }
    }
}
