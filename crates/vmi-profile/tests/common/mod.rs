//! Finding a real Debian kernel for the real-data tests.
//!
//! Order: `$VMI_PROFILE_VMLINUZ`; kernels already unpacked by the test-guest crate
//! (`<cache>/kernels/*/vmlinuz`); `.deb`s in `<cache>/debs/**` (unpacked here with
//! `dpkg-deb -x`); else `apt-get download` of the package behind `linux-image-cloud-amd64`
//! into `<cache>/debs/`. `<cache>` is `$VMI_GUEST_CACHE` or `<workspace>/target/vmi-guest-cache`.
//! Without any, tests skip with a message, or fail when `VMI_REQUIRE_GUEST=1`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn cache_dir() -> PathBuf {
    match std::env::var_os("VMI_GUEST_CACHE") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/vmi-guest-cache"),
    }
}

fn debs_in(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            debs_in(&p, out);
        } else if p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
            n.starts_with("linux-image-") && n.ends_with(".deb") && !n.contains("-dbg")
        }) {
            out.push(p);
        }
    }
}

fn unpack_deb(deb: &Path) -> Option<PathBuf> {
    let stem = deb.file_stem()?.to_str()?.to_owned();
    let dir = cache_dir().join("profile-extract").join(&stem);
    let find = |dir: &Path| -> Option<PathBuf> {
        std::fs::read_dir(dir.join("boot"))
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("vmlinuz-"))
            })
    };
    if let Some(p) = find(&dir) {
        return Some(p);
    }
    let tmp = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).ok()?;
    let ok = Command::new("dpkg-deb")
        .arg("-x")
        .arg(deb)
        .arg(&tmp)
        .status()
        .ok()?
        .success();
    if !ok {
        return None;
    }
    let _ = std::fs::remove_dir_all(tmp.join("lib"));
    let _ = std::fs::rename(&tmp, &dir);
    find(&dir)
}

fn apt_download() -> Option<PathBuf> {
    let out = Command::new("apt-cache")
        .args(["depends", "linux-image-cloud-amd64"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let pkg = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: "))?
        .trim()
        .to_owned();
    let debs = cache_dir().join("debs");
    std::fs::create_dir_all(&debs).ok()?;
    Command::new("apt-get")
        .args(["download", &pkg])
        .current_dir(&debs)
        .status()
        .ok()?
        .success()
        .then_some(())?;
    let mut found = Vec::new();
    debs_in(&debs, &mut found);
    found.into_iter().find(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&format!("{pkg}_")))
    })
}

/// Every distinct real kernel image available (bzImages), deduplicated by file name.
pub fn kernel_images() -> Vec<PathBuf> {
    if let Some(p) = std::env::var_os("VMI_PROFILE_VMLINUZ") {
        return vec![PathBuf::from(p)];
    }
    let mut out: Vec<PathBuf> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    if let Ok(rd) = std::fs::read_dir(cache_dir().join("kernels")) {
        for e in rd.flatten() {
            let p = e.path().join("vmlinuz");
            if p.is_file() && seen.insert(e.file_name().to_string_lossy().into_owned()) {
                out.push(p);
            }
        }
    }
    let mut debs = Vec::new();
    debs_in(&cache_dir().join("debs"), &mut debs);
    if debs.is_empty() && out.is_empty() {
        debs.extend(apt_download());
    }
    for deb in debs {
        // `<package>_<version>_amd64.deb` unpacks to the test-guest crate's
        // `kernels/<package>_<version>`: the same kernel.
        let key = deb
            .file_stem()
            .map(|s| s.to_string_lossy().trim_end_matches("_amd64").to_owned())
            .unwrap_or_default();
        if seen.insert(key)
            && let Some(p) = unpack_deb(&deb)
        {
            out.push(p);
        }
    }
    out
}

/// The kernel image the single-kernel tests pin their known values to: bookworm's 6.1
/// cloud kernel when the cache has it (the cache also holds the other kernels of the test
/// matrix: 5.10, 6.12, generic and RT flavours), else the first one; `None` after
/// printing why the test is skipped.
pub fn kernel_image_or_skip(test: &str) -> Option<PathBuf> {
    let all = kernel_images();
    let is_default = |p: &PathBuf| {
        let s = p.to_string_lossy();
        s.contains("linux-image-6.1.0-") && s.contains("-cloud-amd64")
    };
    let img = all.iter().find(|p| is_default(p)).or(all.first()).cloned();
    if img.is_none() {
        let msg = format!(
            "SKIPPED {test}: no Debian kernel image (.deb not in {} and apt-get download failed)",
            cache_dir().display()
        );
        if std::env::var("VMI_REQUIRE_GUEST").as_deref() == Ok("1") {
            panic!("{msg} and VMI_REQUIRE_GUEST=1");
        }
        eprintln!("{msg}");
    }
    img
}
