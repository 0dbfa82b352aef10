//! ISF export round trip with Volatility 3: a profile built from the test guest's kernel
//! files alone (BTF and banner from the vmlinuz) with the symbols of the guest's own
//! `/proc/kallsyms` (its truth dump, brought back to link-time addresses), exported as ISF,
//! must let `vol linux.pslist` walk the guest's ELF dump and list the processes the guest's
//! truth block lists.
//!
//! Volatility comes from `$VMI_VOL`, else `target/venv/bin/vol` (made by
//! `scripts/setup.sh`), else it is installed there with pip. Without it, or without QEMU,
//! the test prints `SKIPPED` — and fails under `VMI_REQUIRE_GUEST=1`.

use std::collections::BTreeMap;

use vmi_profile::isf::{ExportOptions, write_isf};
use vmi_profile::linux::profile_from_kernel_image;
use vmi_profile::sysmap::parse_system_map;
use vmi_test_guest::{DumpFormat, GuestConfig, TestGuest};

fn required() -> bool {
    std::env::var("VMI_REQUIRE_GUEST").is_ok_and(|v| v == "1")
}

fn skip(why: &str) {
    use std::io::Write as _;
    let _ = std::io::stderr()
        .lock()
        .write_all(format!("SKIPPED: {why}\n").as_bytes());
}

#[test]
fn volatility_pslist_with_exported_isf_matches_the_truth() {
    let vol = match vmi_test_guest::volatility() {
        Ok(v) => v,
        Err(e) if required() => panic!("volatility3 is required: {e}"),
        Err(e) => return skip(&format!("volatility3 unavailable: {e}")),
    };
    let Some(guest) = TestGuest::boot_or_skip(GuestConfig::default().kallsyms(true)) else {
        return;
    };
    let truth = guest.truth().clone();

    // Profile from the kernel files: BTF, banner, and kallsyms found in the image.
    let mut profile = profile_from_kernel_image(guest.vmlinuz()).unwrap();
    assert_eq!(
        profile.metadata.banner.as_deref().map(str::trim_end),
        Some(truth.version.trim_end()),
        "banner of the image equals the running kernel's"
    );

    // Symbols from the guest's own /proc/kallsyms, moved back by the KASLR slide.
    let dump_path = guest
        .env()
        .kallsyms
        .clone()
        .expect("the guest was asked for its kallsyms");
    let text = std::fs::read(&dump_path).unwrap();
    let live = parse_system_map(&text, &dump_path.display().to_string()).unwrap();
    let image_text = profile.symbol_address("_text").unwrap();
    let live_text = live.symbols.address("_text").unwrap();
    let slide = live_text.wrapping_sub(image_text);
    let kallsyms = live.symbols.relocated(slide.wrapping_neg());
    // Every symbol the image's kallsyms knows sits where the guest says (less the slide);
    // static symbols may share a name, so pairs are compared.
    let pairs: std::collections::HashSet<(&str, u64)> = kallsyms
        .iter()
        .map(|s| (s.name.as_str(), s.address))
        .collect();
    let mut agree = 0;
    for s in profile.symbols.iter() {
        assert!(
            pairs.contains(&(s.name.as_str(), s.address)),
            "{} at {:#x} is not in the guest's kallsyms",
            s.name,
            s.address
        );
        agree += 1;
    }
    assert!(agree > 10_000, "only {agree} symbols compared");
    profile.symbols = kallsyms;

    let dir = guest.dir().join("isf-roundtrip");
    std::fs::create_dir_all(&dir).unwrap();
    write_isf(
        &profile,
        &ExportOptions::default(),
        &dir.join("linux-vmi.json"),
    )
    .unwrap();

    guest.pause().expect("pause");
    let dump = guest.dir().join("isf-roundtrip.elf");
    guest.dump(DumpFormat::Elf, &dump).expect("dump");
    let out = vmi_test_guest::volatility_command(&vol, &dir.join("vol-cache"))
        .args(["-r", "json", "-s"])
        .arg(&dir)
        .arg("-f")
        .arg(&dump)
        .arg("linux.pslist.PsList")
        .output()
        .expect("running vol");
    let _ = std::fs::remove_file(&dump);
    assert!(
        out.status.success(),
        "vol failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("vol output: {e}: {}", String::from_utf8_lossy(&out.stdout)));
    let theirs: BTreeMap<u32, (u32, String)> = rows
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k} in {r}")) as u32;
            (
                n("PID"),
                (n("PPID"), r["COMM"].as_str().unwrap().to_owned()),
            )
        })
        .collect();

    // Processes (thread-group leaders) of the truth whose presence does not depend on
    // timing: init, kthreadd, the vmi_* test processes, kernel threads other than workers.
    let long_lived: Vec<_> = truth
        .tasks
        .iter()
        // (the realistic userland's truth printer is gone when the guest is ready, and
        // Volatility 3's pslist does not list its zombie)
        .filter(|t| t.pid == t.tgid && truth.printer_pid != Some(t.pid) && t.state != "Z")
        .filter(|t| {
            t.comm.starts_with("vmi_")
                || t.pid <= 2
                || (t.ppid == 2 && !t.comm.starts_with("kworker"))
        })
        .collect();
    assert!(
        long_lived.len() >= 10,
        "{} long-lived tasks",
        long_lived.len()
    );
    // task_struct.comm holds 15 bytes; /proc shows kernel threads' full names.
    let comm15 = |c: &str| c.chars().take(15).collect::<String>();
    for t in &long_lived {
        assert_eq!(
            theirs.get(&t.pid),
            Some(&(t.ppid, comm15(&t.comm))),
            "pid {} ({}) in volatility's pslist",
            t.pid,
            t.comm
        );
    }
    // And whatever Volatility lists that the truth also lists has the same name.
    let mut same = 0;
    for t in truth.tasks.iter().filter(|t| t.pid == t.tgid) {
        if theirs
            .get(&t.pid)
            .is_some_and(|(_, c)| *c == comm15(&t.comm))
        {
            same += 1;
        }
    }
    eprintln!(
        "volatility pslist: {} processes; truth: {} processes, {} long-lived all found, {same} with equal comm",
        theirs.len(),
        truth.tasks.iter().filter(|t| t.pid == t.tgid).count(),
        long_lived.len()
    );
    guest.resume().unwrap();
}
