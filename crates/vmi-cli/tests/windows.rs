//! The `vmi` binary on synthetic Windows images (real kernel symbol tables, see
//! `vmi-test-windows`): the same commands and JSON shapes as on Linux, checked against
//! the image's manifest.

use std::process::Command;

use serde_json::Value;

/// `vmi --target TARGET --json ARGS…` with the images' symbol tables and the tests'
/// profile cache.
fn vmi_json(target: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vmi"))
        .arg("--target")
        .arg(target)
        .arg("--json")
        .args(args)
        .env("_NT_SYMBOL_PATH", vmi_test_windows::isf_dir())
        .env(
            "VMI_PROFILE_CACHE",
            std::env::temp_dir().join("vmi-cli-test-profiles"),
        )
        .output()
        .expect("run vmi")
}

fn vmi(target: &std::path::Path, args: &[&str]) -> Value {
    let out = vmi_json(target, args);
    assert!(
        out.status.success(),
        "vmi {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

#[test]
fn windows_crash_dump_and_raw_image() {
    // Windows 10 19041 and Windows 7 SP1.
    for key in [
        "9C00B19DBDE003DBFE4AB4216993C843-1",
        "339E74133576439CBCDF7E0229DA3773-1",
    ] {
        let isf = vmi_test_windows::load_isf(key).unwrap();
        let image = vmi_test_windows::build(&isf, &vmi_test_windows::GuestSpec::default_scenario())
            .unwrap();
        let dir = std::env::temp_dir().join(format!("vmi-cli-win-{}-{key}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let raw = dir.join("guest.raw");
        let dmp = dir.join("guest.dmp");
        image.write_files(&raw, Some(&dmp)).unwrap();
        let m = &image.manifest;

        // Both forms for Windows 10; the crash dump alone for Windows 7 (CI time).
        let targets = if key.starts_with("9C00") {
            vec![&dmp, &raw]
        } else {
            vec![&dmp]
        };
        for target in targets {
            let info = vmi(target, &["info"]);
            assert_eq!(info["os"], "windows", "{}", target.display());
            assert_eq!(info["kernel_base"], format!("{:#x}", m.kernel.base));

            let ps = vmi(target, &["ps"]);
            let ps = ps.as_array().unwrap();
            assert_eq!(ps.len(), m.processes.len(), "{key}: process count");
            for p in &m.processes {
                let e = ps.iter().find(|e| e["pid"] == p.pid).expect("pid listed");
                assert_eq!(e["name"], p.name.as_str());
                assert_eq!(e["ppid"], p.ppid);
                if let Some(cmd) = p.cmdline.as_deref() {
                    assert_eq!(e["cmdline"], cmd);
                }
            }

            let modules = vmi(target, &["modules"]);
            let names: Vec<&str> = modules
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["name"].as_str().unwrap())
                .collect();
            let want: Vec<&str> = m.kernel_modules.iter().map(|m| m.name.as_str()).collect();
            assert_eq!(names, want, "{key}: kernel modules");

            let user = m
                .processes
                .iter()
                .find(|p| p.user && !p.env.is_empty())
                .unwrap();
            let env = vmi(target, &["env", &user.pid.to_string()]);
            for (k, v) in &user.env {
                assert!(
                    env.as_array()
                        .unwrap()
                        .iter()
                        .any(|e| e["name"] == k.as_str() && e["value"] == v.as_str()),
                    "{key}: {k}={v} missing"
                );
            }
            let threads = vmi(target, &["threads", &user.pid.to_string()]);
            assert_eq!(threads.as_array().unwrap().len(), user.threads.len());
            let maps = vmi(target, &["maps", &user.pid.to_string()]);
            assert_eq!(maps.as_array().unwrap().len(), user.vads.len());
            let handles = vmi(target, &["handles", &user.pid.to_string()]);
            assert_eq!(handles.as_array().unwrap().len(), user.handles.len());
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}

/// Runs `vmi --json scan ARGS` on `target`: the JSON lines of stdout and stderr.
fn scan(target: &std::path::Path, args: &[&str]) -> (Vec<Value>, String) {
    let out = vmi_json(target, &[&["scan"], args].concat());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "vmi scan {args:?}: {stderr}");
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    (lines, stderr)
}

/// Every offset of `needle` in `hay`.
fn occurrences(hay: &[u8], needle: &[u8]) -> Vec<u64> {
    hay.windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i as u64)
        .collect()
}

/// A YARA text string: `"` and `\` escaped.
fn yara_text(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// `vmi scan` on a synthetic Windows image, as a crash dump and as a raw image:
/// `--physical` finds every occurrence the image's bytes hold (and, in the crash dump,
/// those inside its physical runs), a process scan finds each process's command line in
/// that process's VADs at an address whose bytes are the command line, and
/// `--max-matches` caps the matches shown per rule and reports the rest.
#[test]
fn scan_physical_and_processes_on_windows_images() {
    let key = "9C00B19DBDE003DBFE4AB4216993C843-1";
    let isf = vmi_test_windows::load_isf(key).unwrap();
    let image =
        vmi_test_windows::build(&isf, &vmi_test_windows::GuestSpec::default_scenario()).unwrap();
    let dir = std::env::temp_dir().join(format!("vmi-cli-win-scan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let raw = dir.join("guest.raw");
    let dmp = dir.join("guest.dmp");
    image.write_files(&raw, Some(&dmp)).unwrap();
    let m = &image.manifest;
    let bytes = image.raw();

    // Rule `names`: the image names (ASCII); rule `cmdlines`: the command lines (UTF-16).
    let mut names: Vec<&str> = m.processes.iter().map(|p| p.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let cmdlines: Vec<(u64, &str)> = m
        .processes
        .iter()
        .filter_map(|p| Some((p.pid, p.cmdline.as_deref()?)))
        .filter(|(_, c)| c.len() >= 4)
        .collect();
    assert!(!cmdlines.is_empty(), "the scenario has command lines");
    let mut rules = String::from("rule names {\n  strings:\n");
    for (i, n) in names.iter().enumerate() {
        rules.push_str(&format!("    $n{i} = \"{}\"\n", yara_text(n)));
    }
    rules.push_str("  condition:\n    any of them\n}\nrule cmdlines {\n  strings:\n");
    for (i, (_, c)) in cmdlines.iter().enumerate() {
        rules.push_str(&format!("    $c{i} = \"{}\" wide\n", yara_text(c)));
    }
    rules.push_str("  condition:\n    any of them\n}\n");
    let rules_path = dir.join("rules.yar");
    std::fs::write(&rules_path, rules).unwrap();
    let rules_arg = rules_path.to_str().unwrap();

    // The truth: every (physical address, length) of a name in the image's bytes.
    let mut truth: Vec<(u64, u64)> = names
        .iter()
        .flat_map(|n| {
            occurrences(bytes, n.as_bytes())
                .into_iter()
                .map(move |at| (at, n.len() as u64))
        })
        .collect();
    truth.sort_unstable();
    assert!(truth.len() >= 2, "names occur in the image");
    let in_runs = |&(at, len): &(u64, u64)| {
        m.physical_runs
            .iter()
            .any(|&(start, run)| start <= at && at + len <= start + run)
    };
    let found = |lines: &[Value], rule: &str| -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = lines
            .iter()
            .filter(|l| l["rule"] == rule && l["truncated"].is_null())
            .map(|l| {
                let pa = l["pa"].as_str().expect("pa");
                let pa = u64::from_str_radix(pa.trim_start_matches("0x"), 16).unwrap();
                (pa, l["length"].as_u64().unwrap())
            })
            .collect();
        v.sort_unstable();
        v
    };

    for (target, expected) in [
        (&raw, truth.clone()),
        (&dmp, truth.iter().copied().filter(in_runs).collect()),
    ] {
        let shown = target.display();
        let (lines, stderr) = scan(target, &["--rules", rules_arg, "--physical"]);
        assert_eq!(found(&lines, "names"), expected, "{shown}: --physical");
        assert!(
            lines
                .iter()
                .all(|l| l["space"] == "physical" && l["va"].is_null())
        );
        assert!(!stderr.contains("not shown"), "{stderr}");

        // The cap (once: CI time): one match shown, the others counted, on stderr and
        // in JSON.
        if target != &raw {
            scan_processes(target, rules_arg, &cmdlines, m, bytes);
            continue;
        }
        let (lines, stderr) = scan(
            target,
            &["--rules", rules_arg, "--physical", "--max-matches", "1"],
        );
        assert_eq!(found(&lines, "names").len(), 1, "{shown}: --max-matches 1");
        let note = lines
            .iter()
            .find(|l| l["truncated"] == true && l["rule"] == "names")
            .unwrap_or_else(|| panic!("{shown}: a truncated object for rule names"));
        assert_eq!(note["shown"], 1);
        assert_eq!(note["not_shown"], expected.len() as u64 - 1);
        assert_eq!(note["max_matches"], 1);
        assert!(
            stderr.contains("note: rule names:") && stderr.contains("more not shown"),
            "{stderr}"
        );

        scan_processes(target, rules_arg, &cmdlines, m, bytes);
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Processes: each command line in its own process, at bytes that hold it.
fn scan_processes(
    target: &std::path::Path,
    rules_arg: &str,
    cmdlines: &[(u64, &str)],
    m: &vmi_test_windows::Manifest,
    bytes: &[u8],
) {
    let shown = target.display();
    {
        let (lines, _) = scan(target, &["--rules", rules_arg]);
        for &(pid, cmdline) in cmdlines {
            let wide: Vec<u8> = cmdline.encode_utf16().flat_map(u16::to_le_bytes).collect();
            let p = m.process(pid).unwrap();
            let hit = lines.iter().find(|l| {
                l["rule"] == "cmdlines"
                    && l["pid"] == pid
                    && l["length"].as_u64() == Some(wide.len() as u64)
            });
            let hit = hit.unwrap_or_else(|| panic!("{shown}: pid {pid}'s command line"));
            let hexnum = |v: &Value| {
                u64::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
            };
            let va = hexnum(&hit["va"]);
            assert!(
                p.vads.iter().any(|v| v.start <= va && va <= v.end),
                "{shown}: pid {pid}: {va:#x} in a VAD"
            );
            let pa = hexnum(&hit["pa"]) as usize;
            let first = (wide.len()).min(4096 - (pa & 0xfff));
            assert_eq!(
                &bytes[pa..pa + first],
                &wide[..first],
                "{shown}: pid {pid}: the bytes at {pa:#x}"
            );
        }
        assert!(lines.iter().all(|l| l["space"] == "process"));
    }
}

/// `vmi scan --kernel-space` on a synthetic Windows image: each driver's CodeView PDB
/// name is found once, inside that driver's module, whose name the match's region
/// carries; ntoskrnl's range is scanned too (no PDB name planted there).
#[test]
fn scan_kernel_space_on_a_windows_image_finds_each_driver_in_its_module() {
    let key = "9C00B19DBDE003DBFE4AB4216993C843-1";
    let isf = vmi_test_windows::load_isf(key).unwrap();
    let image =
        vmi_test_windows::build(&isf, &vmi_test_windows::GuestSpec::default_scenario()).unwrap();
    let dir = std::env::temp_dir().join(format!("vmi-cli-win-kscan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let raw = dir.join("guest.raw");
    image.write_files(&raw, None).unwrap();
    let m = &image.manifest;
    let drivers: Vec<&vmi_test_windows::ModuleTruth> = m
        .kernel_modules
        .iter()
        .filter(|k| k.pdb.is_some())
        .collect();
    assert!(drivers.len() >= 2, "the scenario has drivers");
    let mut rules = String::from("rule pdbs {\n  strings:\n");
    for (i, d) in drivers.iter().enumerate() {
        rules.push_str(&format!("    $p{i} = \"{}\"\n", d.pdb.as_deref().unwrap()));
    }
    rules.push_str("  condition:\n    any of them\n}\n");
    let rules_path = dir.join("pdbs.yar");
    std::fs::write(&rules_path, rules).unwrap();

    let (lines, stderr) = scan(
        &raw,
        &["--rules", rules_path.to_str().unwrap(), "--kernel-space"],
    );
    for d in &drivers {
        let pdb = d.pdb.as_deref().unwrap();
        let hex: String = pdb.bytes().map(|b| format!("{b:02x}")).collect();
        let hits: Vec<&Value> = lines.iter().filter(|l| l["bytes"] == hex).collect();
        assert_eq!(hits.len(), 1, "{pdb}: {hits:?} ({stderr})");
        let h = hits[0];
        assert_eq!(h["space"], "kernel", "{h}");
        assert!(h["pid"].is_null() && !h["pa"].is_null(), "{h}");
        assert_eq!(h["region"]["name"], d.name.as_str(), "{h}");
        let va =
            u64::from_str_radix(h["va"].as_str().unwrap().trim_start_matches("0x"), 16).unwrap();
        assert!(
            d.base <= va && va + pdb.len() as u64 <= d.base + d.size,
            "{h}"
        );
    }
    assert_eq!(lines.len(), drivers.len(), "{lines:?}");
    std::fs::remove_dir_all(&dir).ok();
}
