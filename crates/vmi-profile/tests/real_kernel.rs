//! Real data: the Debian cloud kernel's vmlinuz (see `common` for how it is found).

mod common;

use vmi_profile::image::{Vmlinux, vmlinux_from_image};
use vmi_profile::linux::profile_from_kernel_image;

#[test]
fn vmlinuz_profile_has_known_offsets() {
    let Some(path) = common::kernel_image_or_skip("vmlinuz_profile_has_known_offsets") else {
        return;
    };
    let p = profile_from_kernel_image(&path).expect("profile");
    eprintln!("{:#?}", p.metadata);
    eprintln!("types {} symbols {}", p.types.len(), p.symbols.len());
    for (s, f) in [
        ("task_struct", "tasks"),
        ("task_struct", "pid"),
        ("task_struct", "comm"),
        ("task_struct", "mm"),
        ("task_struct", "__state"),
        ("task_struct", "thread.sp"),
        ("mm_struct", "pgd"),
    ] {
        eprintln!("{s}.{f} = {:?}", p.field(s, f));
    }
    let _ = (Vmlinux::parse, vmlinux_from_image);
}

#[test]
fn isf_export_round_trips() {
    let Some(path) = common::kernel_image_or_skip("isf_export_round_trips") else {
        return;
    };
    let p = profile_from_kernel_image(&path).expect("profile");
    let v = vmi_profile::isf::export_isf(&p, &Default::default());
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("vmlinux-isf.json");
    std::fs::write(&out, serde_json::to_vec(&v).unwrap()).unwrap();
    eprintln!("wrote {}", out.display());
    let back = vmi_profile::isf::load_isf(&out).expect("import");
    for (s, f) in [
        ("task_struct", "tasks"),
        ("task_struct", "__state"),
        ("task_struct", "thread.sp"),
        ("mm_struct", "pgd"),
    ] {
        assert_eq!(
            back.field(s, f).unwrap().offset,
            p.field(s, f).unwrap().offset,
            "{s}.{f}"
        );
    }
    assert_eq!(back.metadata.banner, p.metadata.banner);
    assert_eq!(
        back.symbols.address("init_task"),
        p.symbols.address("init_task")
    );
}
