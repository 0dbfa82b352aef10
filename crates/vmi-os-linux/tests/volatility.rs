//! Volatility 3 as an independent oracle: `linux.pslist` with the ISF exported from our
//! profile, on the test guest's ELF dump, must list the same processes (pid, ppid, comm)
//! as we do.
//!
//! Volatility is taken from `$VMI_VOL`, else `target/venv/bin/vol` (made by
//! `scripts/setup.sh`), else installed there with pip when pip can reach PyPI. Without it
//! the test prints `SKIPPED` — and fails under `VMI_REQUIRE_GUEST=1`.

mod common;

use std::collections::BTreeSet;

use vmi_core::VmiCore;
use vmi_driver_dump::DumpDriver;
use vmi_os_linux::LinuxOs;
use vmi_test_guest::{DumpFormat, GuestConfig, TestGuest};

fn require() -> bool {
    std::env::var("VMI_REQUIRE_GUEST").is_ok_and(|v| v == "1")
}

#[test]
fn volatility_pslist_agrees() {
    let vol = match vmi_test_guest::volatility() {
        Ok(v) => v,
        Err(e) if require() => panic!("volatility3 is required: {e}"),
        Err(e) => return common::skip(&format!("volatility3 unavailable: {e}")),
    };
    let Some(guest) = TestGuest::boot_or_skip(GuestConfig::default()) else {
        return;
    };
    guest.pause().expect("pause");
    let dump = guest.dir().join("vol.elf");
    guest.dump(DumpFormat::Elf, &dump).expect("dump");

    let driver = DumpDriver::open(&dump).unwrap();
    let note = driver.vmcoreinfo().expect("VMCOREINFO note").to_owned();
    let core = VmiCore::new(driver).unwrap();
    let os = LinuxOs::builder()
        .cache_dir(guest.dir().join("cache"))
        .vmcoreinfo(note)
        .build(&core)
        .unwrap();
    let list = os.process_list(&core).unwrap();
    let ours: BTreeSet<(u32, u32, String)> = list
        .tasks
        .iter()
        .map(|t| (t.tgid, t.ppid, t.comm.clone()))
        .collect();

    let isf_dir = guest.dir().join("isf");
    std::fs::create_dir_all(&isf_dir).unwrap();
    os.write_isf(&isf_dir.join("linux-vmi.json")).unwrap();
    let out = vmi_test_guest::volatility_command(&vol, &isf_dir.join("vol-cache"))
        .args(["-r", "json", "-s"])
        .arg(&isf_dir)
        .arg("-f")
        .arg(&dump)
        .arg("linux.pslist.PsList")
        .output()
        .expect("running vol");
    assert!(
        out.status.success(),
        "vol failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("vol output: {e}: {}", String::from_utf8_lossy(&out.stdout)));
    let theirs: BTreeSet<(u32, u32, String)> = rows
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k} in {r}")) as u32;
            (n("PID"), n("PPID"), r["COMM"].as_str().unwrap().to_owned())
        })
        .collect();
    eprintln!(
        "volatility: {} processes, ours: {}",
        theirs.len(),
        ours.len()
    );
    assert_eq!(ours, theirs);
    guest.resume().unwrap();
}
