//! Our reader against Volatility 3, plugin by plugin, on the same synthetic images.
//!
//! Runs `vol` (from `VMI_VOL`, else `target/venv/bin/vol`, which `scripts/setup.sh` makes
//! with volatility3==2.28.2) with `-r json` and compares its rows with what this crate
//! reports (not with the manifest: the manifest only decides who is wrong when they differ).
//! Without `vol` the test prints a SKIPPED line and passes, unless `VMI_REQUIRE_GUEST=1`.
//!
//! Normalisations (facts about Volatility's output): addresses in pslist, modules and
//! threads are 48-bit; VAD files are FILE_OBJECT names without the device; Volatility skips
//! handles whose stored type index is 0 (the builder never plants one).

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use vmi_core::VmiCore;
use vmi_os_windows::{LdrList, WindowsOs};
use vmi_test_windows::{GuestImage, Manifest, Options};

const M48: u64 = (1 << 48) - 1;

fn say(msg: &str) {
    // Bypasses libtest's capture so that a skip is visible.
    let _ = writeln!(std::io::stderr(), "{msg}");
}

fn vol() -> Option<PathBuf> {
    let p = std::env::var_os("VMI_VOL")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/venv/bin/vol"));
    if p.is_file() {
        return Some(p);
    }
    let msg = format!(
        "SKIPPED volatility cross-check: no vol at {} (run scripts/setup.sh or set VMI_VOL)",
        p.display()
    );
    if std::env::var("VMI_REQUIRE_GUEST").as_deref() == Ok("1") {
        panic!("{msg} and VMI_REQUIRE_GUEST=1");
    }
    say(&msg);
    None
}

struct Vol {
    exe: PathBuf,
    dir: PathBuf,
}

impl Vol {
    fn new(exe: PathBuf, keys: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!("vmi-vol-{}", std::process::id()));
        let sym = dir.join("symbols/windows/ntkrnlmp.pdb");
        std::fs::create_dir_all(&sym).unwrap();
        std::fs::create_dir_all(dir.join("cache")).unwrap();
        // Copies, never the fixture directory itself.
        for k in keys {
            std::fs::copy(
                vmi_test_windows::isf_path(k),
                sym.join(format!("{k}.json.xz")),
            )
            .unwrap();
        }
        Self { exe, dir }
    }

    fn run(&self, file: &Path, plugin: &str) -> Vec<Value> {
        let out = Command::new(&self.exe)
            .args(["-q", "--offline", "-r", "json", "--cache-path"])
            .arg(self.dir.join("cache"))
            .arg("-s")
            .arg(self.dir.join("symbols"))
            .arg("-f")
            .arg(file)
            .arg(plugin)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let start = text.find('[').unwrap_or_else(|| {
            panic!(
                "vol {plugin}: no JSON ({})",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let rows: Vec<Value> = serde_json::from_str(&text[start..]).unwrap();
        let mut flat = vec![];
        let mut stack = rows;
        while let Some(mut r) = stack.pop() {
            if let Some(Value::Array(ch)) = r.get_mut("__children").map(Value::take) {
                stack.extend(ch);
            }
            flat.push(r);
        }
        flat
    }
}

impl Drop for Vol {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "N/A".into(),
        Value::String(x) => x.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => other.to_string(),
    }
}

fn addr(v: &Value) -> String {
    v.as_u64().map_or_else(|| s(v), |a| (a & M48).to_string())
}

type Rows = BTreeSet<Vec<String>>;

fn vol_rows(rows: &[Value], cols: &[&str], addrs: &[&str]) -> Rows {
    rows.iter()
        .map(|r| {
            cols.iter()
                .map(|c| {
                    if addrs.contains(c) {
                        addr(&r[*c])
                    } else {
                        s(&r[*c])
                    }
                })
                .collect()
        })
        .collect()
}

fn ours(
    core: &VmiCore<impl vmi_core::VmiRead<Architecture = vmi_arch_amd64::Amd64>>,
    os: &WindowsOs,
    plugin: &str,
) -> Rows {
    let mut out = Rows::new();
    let a = |v: u64| (v & M48).to_string();
    let procs = os.win_processes(core).unwrap();
    match plugin {
        "windows.pslist" => {
            for p in &procs {
                let session = p.session.map_or("N/A".into(), |x| x.to_string());
                out.insert(vec![
                    p.pid.to_string(),
                    p.ppid.to_string(),
                    p.name.clone(),
                    a(p.eprocess.0),
                    p.active_threads.to_string(),
                    session,
                ]);
            }
        }
        "windows.modules" => {
            for m in os.kernel_modules(core).unwrap() {
                out.insert(vec![m.name, m.path, a(m.base.0), m.size.to_string()]);
            }
        }
        _ => {
            for p in &procs {
                let pid = p.pid.to_string();
                match plugin {
                    "windows.dlllist" => {
                        for m in os.user_modules(core, p, LdrList::Load).unwrap() {
                            out.insert(vec![
                                pid.clone(),
                                m.name,
                                m.path,
                                m.base.0.to_string(),
                                m.size.to_string(),
                            ]);
                        }
                    }
                    "windows.cmdline" if p.peb.0 != 0 => {
                        out.insert(vec![pid.clone(), os.command_line(core, p).unwrap()]);
                    }
                    "windows.envars" if p.peb.0 != 0 => {
                        for (k, v) in os.environment(core, p).unwrap() {
                            out.insert(vec![pid.clone(), k, v]);
                        }
                    }
                    "windows.threads" => {
                        for t in os.win_threads(core, p).unwrap() {
                            out.insert(vec![
                                pid.clone(),
                                t.tid.to_string(),
                                a(t.start_address.0),
                                a(t.win32_start_address.0),
                            ]);
                        }
                    }
                    "windows.vadinfo" if p.peb.0 != 0 => {
                        for v in os.vads(core, p).unwrap() {
                            out.insert(vec![
                                pid.clone(),
                                v.start.0.to_string(),
                                v.end.0.to_string(),
                                v.tag.clone().unwrap_or_default(),
                                v.protection_name().to_owned(),
                                v.file.clone().unwrap_or_else(|| "N/A".into()),
                            ]);
                        }
                    }
                    "windows.handles" => {
                        for h in os.handles(core, p).unwrap() {
                            out.insert(vec![
                                pid.clone(),
                                h.handle.to_string(),
                                h.type_name.unwrap_or_default(),
                                h.access.to_string(),
                                h.name.unwrap_or_default(),
                            ]);
                        }
                    }
                    "windows.getsids" => {
                        for sid in os.token(core, p).unwrap().sids {
                            out.insert(vec![pid.clone(), sid.sid]);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    out
}

fn vol_side(vol: &Vol, file: &Path, plugin: &str) -> Rows {
    let rows = vol.run(file, plugin);
    match plugin {
        "windows.pslist" => vol_rows(
            &rows,
            &[
                "PID",
                "PPID",
                "ImageFileName",
                "Offset(V)",
                "Threads",
                "SessionId",
            ],
            &["Offset(V)"],
        ),
        "windows.modules" => vol_rows(&rows, &["Name", "Path", "Base", "Size"], &["Base"]),
        "windows.dlllist" => vol_rows(&rows, &["PID", "Name", "Path", "Base", "Size"], &[]),
        "windows.cmdline" => vol_rows(&rows, &["PID", "Args"], &[])
            .into_iter()
            .filter(|r| r[0] != "4")
            .collect(),
        "windows.envars" => vol_rows(&rows, &["PID", "Variable", "Value"], &[]),
        "windows.threads" => vol_rows(
            &rows,
            &["PID", "TID", "StartAddress", "Win32StartAddress"],
            &["StartAddress", "Win32StartAddress"],
        ),
        "windows.vadinfo" => vol_rows(
            &rows,
            &["PID", "Start VPN", "End VPN", "Tag", "Protection", "File"],
            &[],
        ),
        "windows.handles" => vol_rows(
            &rows,
            &["PID", "HandleValue", "Type", "GrantedAccess", "Name"],
            &[],
        ),
        "windows.getsids" => vol_rows(&rows, &["PID", "SID"], &[]),
        p => panic!("unknown plugin {p}"),
    }
}

const PLUGINS: &[&str] = &[
    "windows.pslist",
    "windows.modules",
    "windows.dlllist",
    "windows.threads",
    "windows.vadinfo",
    "windows.handles",
    "windows.cmdline",
    "windows.envars",
    "windows.getsids",
];

fn compare(
    vol: &Vol,
    file: &Path,
    m: &Manifest,
    core: &VmiCore<impl vmi_core::VmiRead<Architecture = vmi_arch_amd64::Amd64>>,
    os: &WindowsOs,
) -> Vec<String> {
    let mut failures = vec![];
    for plugin in PLUGINS {
        let t = std::time::Instant::now();
        let theirs = vol_side(vol, file, plugin);
        let mine = ours(core, os, plugin);
        let ok = theirs == mine && !mine.is_empty();
        say(&format!(
            "  {} {} {plugin} ({} rows, vol {:.1}s)",
            if ok { "PASS" } else { "FAIL" },
            m.label,
            mine.len(),
            t.elapsed().as_secs_f64()
        ));
        if !ok {
            failures.push(format!(
                "{} {plugin}:\n  only volatility: {:?}\n  only ours: {:?}",
                m.label,
                theirs.difference(&mine).collect::<Vec<_>>(),
                mine.difference(&theirs).collect::<Vec<_>>()
            ));
        }
    }
    failures
}

fn write(img: &GuestImage, dir: &Path, name: &str, dump: bool) -> PathBuf {
    let p = dir.join(name);
    if dump {
        std::fs::write(&p, img.crash_dump()).unwrap();
    } else {
        std::fs::write(&p, img.raw()).unwrap();
    }
    p
}

#[test]
fn volatility_agrees_with_our_reader() {
    let Some(exe) = vol() else { return };
    let cases: &[(&str, Options, bool)] = &[
        (
            "339E74133576439CBCDF7E0229DA3773-1",
            Options::default(),
            false,
        ),
        (
            "9C00B19DBDE003DBFE4AB4216993C843-1",
            Options {
                seed: 2,
                pcid: 2,
                ..Default::default()
            },
            false,
        ),
        (
            "0CE4A95C0CD782A7596B034D8648E585-1",
            Options::default(),
            false,
        ),
        (
            "22597D0B40394E23936F6A24C6C52D5B-1",
            Options {
                seed: 3,
                kdbg: true,
                extra_handles: 300,
                ..Default::default()
            },
            true,
        ),
    ];
    let keys: Vec<&str> = cases.iter().map(|c| c.0).collect();
    let vol = Vol::new(exe, &keys);
    let mut failures = vec![];
    for (i, (key, options, dump)) in cases.iter().enumerate() {
        let img = common::image(key, options.clone());
        let file = write(
            &img,
            &vol.dir,
            &format!("image{i}.{}", if *dump { "dmp" } else { "raw" }),
            *dump,
        );
        let core = common::core_of(&img, true);
        let os = common::open(key, &core, true);
        failures.extend(compare(&vol, &file, &img.manifest, &core, &os));
        let _ = std::fs::remove_file(&file);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
