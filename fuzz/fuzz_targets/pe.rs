//! PE headers, CodeView records and exports, as files and as mapped images.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmi_profile::pe::{ImageLayout, codeview_from_image};

fuzz_target!(|data: &[u8]| {
    let _ = codeview_from_image(data, ImageLayout::File, "fuzz.exe");
    let _ = codeview_from_image(data, ImageLayout::Memory, "fuzz.exe");
    if let Ok(pe) = vmi_os_windows::pe::PeImage::parse(data) {
        let read = |rva: u32, len: usize| -> Option<Vec<u8>> {
            let start = usize::try_from(rva).ok()?;
            data.get(start..start.checked_add(len)?).map(<[u8]>::to_vec)
        };
        let _ = pe.codeview(read);
        let _ = pe.exports(read);
    }
});
