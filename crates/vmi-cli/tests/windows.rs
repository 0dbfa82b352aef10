//! The `vmi` binary on synthetic Windows images (real kernel symbol tables, see
//! `vmi-test-windows`): the same commands and JSON shapes as on Linux, checked against
//! the image's manifest.

use std::process::Command;

use serde_json::Value;

fn vmi(target: &std::path::Path, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_vmi"))
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
        .expect("run vmi");
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
