//! Modules: kernel drivers (`PsLoadedModuleList`), a process's DLLs (the three loader
//! lists of its PEB), in-memory PE images, CodeView records and exports.

use vmi_core::{AccessContext, Pa, Va, VmiCore, VmiError, VmiRead};

use crate::pe::{CodeView, PeImage};
use crate::{Listing, MAX_LIST, WinProcess, WindowsOs};
use crate::{kernel, pe, walk};

/// A loaded module (kernel driver or user DLL/EXE).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WinModule {
    /// Base name.
    pub name: String,
    /// Full path.
    pub path: String,
    /// Base.
    pub base: Va,
    /// SizeOfImage.
    pub size: u64,
    /// Loader entry address.
    pub entry: Va,
}

/// Which of the three loader lists to walk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LdrList {
    /// InLoadOrderModuleList.
    Load,
    /// InMemoryOrderModuleList.
    Memory,
    /// InInitializationOrderModuleList.
    Init,
}

impl WindowsOs {
    /// Kernel modules (`PsLoadedModuleList`); an error if any could not be read (see
    /// [`kernel_module_list`](Self::kernel_module_list)).
    pub fn kernel_modules<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
    ) -> Result<Vec<WinModule>, VmiError> {
        self.kernel_module_list(core)?.complete()
    }

    /// The kernel modules that can be read, and what was skipped.
    pub fn kernel_module_list<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
    ) -> Result<Listing<WinModule>, VmiError> {
        let o = &self.off;
        let head = self.sym(o.ps_loaded_module_list);
        let walk = walk::walk_list(core, self.root, head, "PsLoadedModuleList list", MAX_LIST);
        let mut skipped = walk.errors;
        let mut items = Vec::with_capacity(walk.nodes.len());
        for l in walk.nodes {
            let e = Va(l.0.wrapping_sub(o.kldr_type_links));
            let module = (|| {
                Ok::<_, VmiError>(WinModule {
                    name: self.read_unicode_string(core, self.root, e + o.kldr_basename)?,
                    path: self.read_unicode_string(core, self.root, e + o.kldr_full)?,
                    base: Va(self.kq(core, e + o.kldr_base)?),
                    size: u64::from(core.read_u32(self.k(e + o.kldr_size))?),
                    entry: e,
                })
            })();
            match module {
                Ok(m) => items.push(m),
                Err(err) => skipped.push((e, err)),
            }
        }
        Listing::new(items, skipped)
    }

    /// User modules of a process from one loader list of its PEB; an error if any could
    /// not be read (see [`user_module_list`](Self::user_module_list)).
    pub fn user_modules<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        p: &WinProcess,
        list: LdrList,
    ) -> Result<Vec<WinModule>, VmiError> {
        self.user_module_list(core, p, list)?.complete()
    }

    /// The user modules of one loader list that can be read, and what was skipped.
    pub fn user_module_list<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        p: &WinProcess,
        list: LdrList,
    ) -> Result<Listing<WinModule>, VmiError> {
        let o = &self.off;
        if p.peb.0 == 0 {
            return Ok(Listing {
                items: vec![],
                skipped: vec![],
            });
        }
        let ldr = Va(self.read_process_u64(core, p, p.peb + o.peb_ldr)?);
        let (head_off, link_off) = match list {
            LdrList::Load => (o.pld_load, o.ldr_load_links),
            LdrList::Memory => (o.pld_mem, o.ldr_mem_links),
            LdrList::Init => (o.pld_init, o.ldr_init_links),
        };
        let walk = walk::walk_list(core, p.dtb, ldr + head_off, "PEB loader list", MAX_LIST);
        let mut skipped = walk.errors;
        let mut items = Vec::with_capacity(walk.nodes.len());
        for l in walk.nodes {
            let e = Va(l.0.wrapping_sub(link_off));
            let module = (|| {
                Ok::<_, VmiError>(WinModule {
                    name: self.read_unicode_string(core, p.dtb, e + o.ldr_basename)?,
                    path: self.read_unicode_string(core, p.dtb, e + o.ldr_full)?,
                    base: Va(self.read_process_u64(core, p, e + o.ldr_base)?),
                    size: u64::from(core.read_u32(AccessContext::paging(e + o.ldr_size, p.dtb))?),
                    entry: e,
                })
            })();
            match module {
                Ok(m) => items.push(m),
                Err(err) => skipped.push((e, err)),
            }
        }
        Listing::new(items, skipped)
    }

    /// Parses the PE headers of the image at `base` in `root`.
    pub fn pe_image<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        root: Pa,
        base: Va,
    ) -> Result<PeImage, VmiError> {
        let mut page = vec![0u8; 0x1000];
        core.read(AccessContext::paging(base, root), &mut page)?;
        PeImage::parse(&page)
    }

    /// The CodeView record of the image at `base` in `root`.
    pub fn codeview<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        root: Pa,
        base: Va,
    ) -> Result<CodeView, VmiError> {
        self.pe_image(core, root, base)?
            .codeview(kernel::image_reader(core, root, base))
            .ok_or_else(|| VmiError::NotFound {
                kind: "CodeView record of image",
                name: base.to_string(),
            })
    }

    /// Named exports of the image at `base` in `root`.
    pub fn exports<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        root: Pa,
        base: Va,
    ) -> Result<Vec<pe::PeExport>, VmiError> {
        self.pe_image(core, root, base)?
            .exports(kernel::image_reader(core, root, base))
    }
}
