//! `vmi scan` side by side with its peers (issue 17), on the busybox test guest's memory:
//!
//! * `physical`: `vmi scan --physical` of a 256 MiB raw image (whole command: start,
//!   rules compiled, image opened, scanned) against YARA-X scanning the same file
//!   (`yara_x.Scanner.scan_file`, its Python package, rules compiled before the clock);
//! * `processes`: `vmi scan` of every process of the ELF dump of the same moment against
//!   Volatility 3's `linux.vmayarascan` with the ISF `vmi profile export` wrote.
//!
//! The rules: the marker the test guest plants in a process's environment, and the kernel
//! banner. YARA-X's Python package is looked for next to Volatility
//! (`target/venv/bin/pip install yara-x` puts it there); each peer is skipped with a
//! message when it is missing.

#![allow(missing_docs)] // criterion's macros generate undocumented items

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::run;
use criterion::{Criterion, criterion_group, criterion_main};
use vmi_test_guest::{DumpFormat, GuestConfig, TestGuest, Userland};

const YARA_X_SCAN: &str = r#"
import sys, yara_x
rules = yara_x.compile(open(sys.argv[1]).read())
scanner = yara_x.Scanner(rules)
print(sum(len(p.matches) for r in scanner.scan_file(sys.argv[2]).matching_rules for p in r.patterns))
"#;

fn vmi(target: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vmi"));
    c.arg("--target").arg(target).args(args);
    c
}

fn bench(c: &mut Criterion) {
    let Some(guest) = TestGuest::boot_or_skip(GuestConfig::default().userland(Userland::Busybox))
    else {
        return;
    };
    guest.pause().expect("pause");
    let truth = guest.truth().clone();
    let dir = guest.dir();
    let raw = dir.join("bench.raw");
    std::fs::copy(guest.mem_file(), &raw).expect("the RAM file as a raw image");
    let elf = dir.join("bench.elf");
    guest.dump(DumpFormat::Elf, &elf).expect("dump");
    let rules = dir.join("bench.yar");
    std::fs::write(
        &rules,
        format!(
            "rule env_marker {{ strings: $value = \"VMI-ENV-MARKER-5a17c0de\" condition: $value }}\n\
             rule banner {{ strings: $b = \"Linux version {} (\" condition: $b }}\n",
            truth.release
        ),
    )
    .unwrap();
    let rules_s = rules.to_str().unwrap();

    let vol = vmi_test_guest::volatility().ok();
    let python = vol.as_ref().map(|v| v.with_file_name("python"));
    let yara_x = python.clone().filter(|p| {
        Command::new(p)
            .args(["-c", "import yara_x"])
            .status()
            .is_ok_and(|s| s.success())
    });
    let script = dir.join("yara_x_scan.py");
    std::fs::write(&script, YARA_X_SCAN).unwrap();

    let mut g = c.benchmark_group("scan_physical_256MiB_raw");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.bench_function("vmi_scan_physical", |b| {
        b.iter(|| run(&mut vmi(&raw, &["scan", "--physical", "--rules", rules_s])))
    });
    match &yara_x {
        Some(p) => {
            g.bench_function("yara_x_scan_file", |b| {
                b.iter(|| run(Command::new(p).arg(&script).arg(&rules).arg(&raw)))
            });
        }
        None => eprintln!("SKIPPED: yara-x's Python package (target/venv/bin/pip install yara-x)"),
    }
    g.finish();

    let isf = dir.join("isf");
    std::fs::create_dir_all(&isf).unwrap();
    run(&mut vmi(
        &elf,
        &[
            "profile",
            "export",
            isf.join("linux.json").to_str().unwrap(),
        ],
    ));
    let mut g = c.benchmark_group("scan_every_process_elf");
    g.sample_size(10).measurement_time(Duration::from_secs(20));
    g.bench_function("vmi_scan", |b| {
        b.iter(|| run(&mut vmi(&elf, &["scan", "--rules", rules_s])))
    });
    match &vol {
        Some(v) => {
            g.bench_function("volatility3_vmayarascan", |b| {
                b.iter(|| {
                    run(
                        vmi_test_guest::volatility_command(v, &isf.join("vol-cache"))
                            .args(["-q", "-r", "json", "-s"])
                            .arg(&isf)
                            .arg("-f")
                            .arg(&elf)
                            .args(["linux.vmayarascan", "--yara-file", rules_s]),
                    )
                })
            });
        }
        None => eprintln!("SKIPPED: Volatility 3 (scripts/setup.sh installs it)"),
    }
    g.finish();
    drop(guest);
}

criterion_group!(benches, bench);
criterion_main!(benches);
