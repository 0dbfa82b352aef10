//! With the `xen-sys` feature: generates Rust bindings from Xen's `libxen-dev` headers
//! (`XEN_HEADERS_DIR`, default `/usr/include`) and links libxenctrl,
//! libxenforeignmemory and libxenevtchn (`XEN_LIB_DIR`; `XEN_STATIC=1` links the `.a`
//! files and their dependencies). Without the feature it does nothing, so the default
//! build needs neither libclang nor libxen.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(xen_getinfo_single)");
    #[cfg(feature = "xen-sys")]
    xen_sys::generate();
}

#[cfg(feature = "xen-sys")]
mod xen_sys {
    use std::path::PathBuf;

    // The compatibility device-model API brings `xc_hvm_inject_trap` (in libxenctrl, over
    // libxendevicemodel) from Xen 4.9 to 4.20 alike.
    const WRAPPER: &str = "#define XC_WANT_COMPAT_DEVICEMODEL_API 1
#include <xenctrl.h>
#include <xenforeignmemory.h>
#include <xenevtchn.h>
#include <xen/vm_event.h>
#include <xen/hvm/save.h>
";

    pub fn generate() {
        for v in [
            "XEN_HEADERS_DIR",
            "XEN_LIB_DIR",
            "XEN_STATIC",
            "LIBCLANG_PATH",
        ] {
            println!("cargo:rerun-if-env-changed={v}");
        }
        let inc = std::env::var("XEN_HEADERS_DIR").unwrap_or_else(|_| "/usr/include".into());
        let xenctrl = PathBuf::from(&inc).join("xenctrl.h");
        println!("cargo:rerun-if-changed={}", xenctrl.display());
        let header = std::fs::read_to_string(&xenctrl).unwrap_or_else(|e| {
            panic!(
                "feature xen-sys: cannot read {} ({e}); install libxen-dev or set XEN_HEADERS_DIR",
                xenctrl.display()
            )
        });
        // Xen 4.18 removed xc_domain_getinfo() and added xc_domain_getinfo_single().
        if header.contains("xc_domain_getinfo_single") {
            println!("cargo:rustc-cfg=xen_getinfo_single");
        }
        let bindings = bindgen::Builder::default()
            .header_contents("vmi_xen_wrapper.h", WRAPPER)
            .clang_arg(format!("-I{inc}"))
            .allowlist_function(
                "xc_interface_(open|close)|xc_domain_(pause|unpause|getinfolist|getinfo_single|maximum_gpfn|hvm_getcontext|hvm_getcontext_partial|hvm_setcontext)|xc_vcpu_(get|set)context|xc_monitor_(enable|disable|write_ctrlreg|mov_to_msr|software_breakpoint|singlestep|cpuid|debug_exceptions|guest_request)|xc_altp2m_(set_domain_state|create_view|destroy_view|switch_to_view|set_mem_access)|xc_set_mem_access|xc_hvm_inject_trap|xenforeignmemory_(open|close|map|unmap)|xenevtchn_(open|close|fd|bind_interdomain|unbind|notify|pending|unmask)",
            )
            .allowlist_type(
                "vm_event_st|vm_event_regs_x86|hvm_hw_cpu|hvm_save_descriptor|vcpu_guest_context_any_t|vcpu_guest_context_x86_64_t|xc_domaininfo_t|xenmem_access_t",
            )
            .allowlist_var("VM_EVENT_INTERFACE_VERSION|XEN_DOMINF_.*|XEN_INVALID_MAX_VCPU_ID")
            .derive_default(true)
            .layout_tests(false)
            .generate_comments(false)
            .generate()
            .unwrap_or_else(|e| panic!("feature xen-sys: bindgen on {inc}: {e}"));
        let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("xen_bindings.rs");
        bindings
            .write_to_file(&out)
            .unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));

        if let Ok(dir) = std::env::var("XEN_LIB_DIR") {
            println!("cargo:rustc-link-search=native={dir}");
            // libxenctrl.so pulls in libxencall, libxentoollog, ...: let the linker find them.
            println!("cargo:rustc-link-arg=-Wl,-rpath-link,{dir}");
        }
        if std::env::var("XEN_STATIC").is_ok_and(|v| v == "1") {
            for l in [
                "xenctrl",
                "xenforeignmemory",
                "xenevtchn",
                "xendevicemodel",
                "xencall",
                "xentoolcore",
                "xentoollog",
            ] {
                println!("cargo:rustc-link-lib=static={l}");
            }
        } else {
            for l in ["xenctrl", "xenforeignmemory", "xenevtchn"] {
                println!("cargo:rustc-link-lib=dylib={l}");
            }
        }
    }
}
