//! Linux profiles from what is at hand: a vmlinuz/vmlinux file, raw BTF, guest memory.

use std::path::Path;

use crate::btf::{MAX_BTF_SIZE, looks_like_btf, parse_btf};
use crate::error::{ProfileError, Result};
use crate::image::{
    Vmlinux, find_banner, is_bzimage, parse_bzimage, read_file, release_from_banner,
    vmlinux_from_image,
};
use crate::kallsyms::{self, ImageMemory, Kallsyms, KernelMemory};
use crate::profile::{Metadata, OsKind, Profile};
use crate::symbols::SymbolTable;
use crate::types::Types;

/// Builds a Linux profile from a kernel file: a `vmlinuz` bzImage (any supported payload
/// compression), a `vmlinux` ELF, or a raw BTF blob.
///
/// Types come from BTF; the banner, release and build id from the image; symbols from the
/// kallsyms tables found in the image's `.rodata` (link-time addresses: apply the KASLR
/// slide, e.g. VMCOREINFO's `KERNELOFFSET`, with [`SymbolTable::relocated`]). If the
/// tables cannot be found the profile has no symbols and `metadata.sources` says why.
pub fn profile_from_kernel_image(path: &Path) -> Result<Profile> {
    let data = read_file(path)?;
    profile_from_kernel_bytes(&data, &path.display().to_string())
}

/// [`profile_from_kernel_image`] over bytes already in memory; `source` names them.
pub fn profile_from_kernel_bytes(data: &[u8], source: &str) -> Result<Profile> {
    if looks_like_btf(data) {
        return profile_from_btf(data, source);
    }
    let header_version = is_bzimage(data)
        .then(|| {
            parse_bzimage(data, source)
                .ok()
                .and_then(|b| b.version.map(str::to_owned))
        })
        .flatten();
    let elf_bytes = vmlinux_from_image(data, source)?;
    let elf = Vmlinux::parse(&elf_bytes, source)?;
    let types = parse_btf(elf.btf()?, source)?;
    let banner = elf.banner().or_else(|| find_banner(&elf_bytes));
    let kernel_release = banner
        .as_deref()
        .and_then(release_from_banner)
        .or_else(|| header_version.as_deref()?.split_whitespace().next())
        .map(str::to_owned);
    let mut sources = vec![format!("btf: {source}")];
    let symbols = match kallsyms_from_vmlinux(&elf) {
        Ok(k) => {
            sources.push(format!(
                "kallsyms: {source} ({} symbols, {:?}, link-time addresses)",
                k.symbols.len(),
                k.encoding
            ));
            k.into_table()
        }
        Err(e) => {
            sources.push(format!("kallsyms: none from {source}: {e}"));
            SymbolTable::default()
        }
    };
    Ok(Profile::new(
        Metadata {
            os: OsKind::Linux,
            kernel_release,
            banner,
            build_id: elf.build_id(),
            pdb: None,
            sources,
        },
        symbols,
        types,
    ))
}

/// Finds and decodes the kallsyms tables inside a vmlinux image (link-time addresses).
pub fn kallsyms_from_vmlinux(elf: &Vmlinux<'_>) -> Result<Kallsyms> {
    let mem = ImageMemory::new(elf.loaded_sections());
    let range = mem
        .extent()
        .ok_or_else(|| ProfileError::kallsyms("the image has no loaded sections"))?;
    // The tables live in .rodata; scanning it alone is much faster than the whole image.
    let scan = elf.section_range(".rodata").unwrap_or(range.clone());
    let k = kallsyms::search(&mem, scan, range, &[])?;
    Ok(k)
}

/// A Linux profile holding only BTF types (e.g. BTF read out of guest memory).
pub fn profile_from_btf(bytes: &[u8], source: &str) -> Result<Profile> {
    Ok(Profile::new(
        Metadata {
            os: OsKind::Linux,
            sources: vec![format!("btf: {source}")],
            ..Metadata::default()
        },
        SymbolTable::default(),
        parse_btf(bytes, source)?,
    ))
}

/// Reads the kernel's BTF out of guest memory (`__start_BTF`..`__stop_BTF`, e.g. from
/// kallsyms) and parses it.
pub fn btf_from_memory(mem: &dyn KernelMemory, start: u64, stop: u64) -> Result<Types> {
    let buf = btf_bytes_from_memory(mem, start, stop)?;
    parse_btf(&buf, &format!("guest memory {start:#x}..{stop:#x}"))
}

/// The raw BTF bytes between `__start_BTF` and `__stop_BTF` (at most [`MAX_BTF_SIZE`]), for
/// callers that hash them before parsing (the profile cache keys types by these bytes).
pub fn btf_bytes_from_memory(mem: &dyn KernelMemory, start: u64, stop: u64) -> Result<Vec<u8>> {
    let len = stop.checked_sub(start).ok_or_else(|| ProfileError::Btf {
        source_name: "guest memory".into(),
        offset: 0,
        what: format!("__stop_BTF {stop:#x} is below __start_BTF {start:#x}"),
    })?;
    if len > MAX_BTF_SIZE as u64 {
        return Err(ProfileError::TooLarge {
            source_name: "guest memory".into(),
            what: "btf between __start_BTF and __stop_BTF",
            size: len,
            limit: MAX_BTF_SIZE as u64,
        });
    }
    let mut buf = vec![0u8; len as usize];
    for (i, chunk) in buf.chunks_mut(1 << 20).enumerate() {
        let va = start + (i as u64) * (1 << 20);
        mem.read(va, chunk)
            .map_err(|source| ProfileError::MemoryRead {
                va,
                len: chunk.len(),
                source,
            })?;
    }
    Ok(buf)
}
