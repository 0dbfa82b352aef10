//! Handles: a process's handle table (one to three levels), object types and names.

use vmi_core::{Va, VmiCore, VmiError, VmiRead};

use crate::{Listing, MAX_HANDLES, Skipped, WinProcess, WindowsOs};
use crate::{error, offsets};

/// A handle table entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WinHandle {
    /// Handle value.
    pub handle: u64,
    /// Object body address.
    pub object: Va,
    /// Decoded type index.
    pub type_index: u8,
    /// Type name (`Process`, `File`...), `None` when the index is out of the type table.
    pub type_name: Option<String>,
    /// Granted access.
    pub access: u32,
    /// Display name (process name + pid, thread/process ids, file path, object name).
    pub name: Option<String>,
}

fn canon(va: u64) -> u64 {
    if va & (1 << 47) != 0 {
        va | 0xFFFF_0000_0000_0000
    } else {
        va & 0xFFFF_FFFF_FFFF
    }
}

impl WindowsOs {
    fn type_name<D: VmiRead>(&self, core: &VmiCore<D>, index: u8) -> Option<String> {
        let t = self
            .kq(
                core,
                self.sym(self.off.ob_type_index_table) + u64::from(index) * 8,
            )
            .ok()?;
        if t < 0xFFFF_8000_0000_0000 {
            return None;
        }
        self.read_unicode_string(core, self.root, Va(t) + self.off.ot_name)
            .ok()
    }

    /// The decoded type index of the object whose header is at `header`.
    pub fn object_type_index<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        header: Va,
    ) -> Result<u8, VmiError> {
        let stored = core.read_u8(self.k(header + self.off.oh_type_index))?;
        Ok(match self.cookie {
            Some(c) => stored ^ c ^ ((header.0 >> 8) & 0xFF) as u8,
            None => stored,
        })
    }

    /// The name from an object's `OBJECT_HEADER_NAME_INFO`, if it has one.
    pub fn object_name<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        header: Va,
    ) -> Result<Option<String>, VmiError> {
        let mask = core.read_u8(self.k(header + self.off.oh_info_mask))?;
        if mask & 2 == 0 {
            return Ok(None);
        }
        let off = match self.info_mask_table {
            Some(t) => u64::from(t[usize::from(mask & 3)]),
            None => self.off.ohni_size + if mask & 1 != 0 { self.off.ohci_size } else { 0 },
        };
        let ni = Va(header.0.wrapping_sub(off));
        Ok(Some(self.read_unicode_string(
            core,
            self.root,
            ni + self.off.ohni_name,
        )?))
    }

    /// The handles of a process: level 0, 1 and 2 tables, each entry's object type
    /// (cookie-decoded on Windows 10+) and display name.
    ///
    /// Table pages that cannot be read (handle tables live in paged pool) and objects
    /// whose header cannot be read are left out; [`handle_list`](Self::handle_list)
    /// reports them.
    pub fn handles<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        p: &WinProcess,
    ) -> Result<Vec<WinHandle>, VmiError> {
        Ok(self.handle_list(core, p)?.items)
    }

    /// The handles that can be read, and what was skipped (unreadable table pages and
    /// object headers).
    pub fn handle_list<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        p: &WinProcess,
    ) -> Result<Listing<WinHandle>, VmiError> {
        let o = &self.off;
        let table = self.kq(core, p.eprocess + o.ep_object_table)?;
        if table == 0 {
            return Ok(Listing {
                items: vec![],
                skipped: vec![],
            });
        }
        let mut skipped: Skipped = vec![];
        let code = self.kq(core, Va(table) + o.ht_code)?;
        let level = code & 3;
        let base = code & !7;
        let esz = o.hte_size.max(8);
        let per = 0x1000 / esz;
        // One page of 512 table pointers at `at`; a table that would end past the top of
        // the address space is malformed, an unreadable one is reported and skipped.
        let pointers = |at: u64| -> Result<Vec<u64>, VmiError> {
            if at.checked_add(0x1000).is_none() {
                return Err(error::malformed(
                    "HANDLE_TABLE.TableCode",
                    table,
                    format!("table page at {at:#x} wraps the address space"),
                ));
            }
            let mut page = vec![0u8; 0x1000];
            core.read(self.k(Va(at)), &mut page)?;
            Ok(page
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
                .collect())
        };
        let mut leaves: Vec<(u64, u64)> = vec![];
        match level {
            0 => leaves.push((base, 0)),
            1 | 2 => {
                let mut mids = vec![(base, 0u64)];
                if level == 2 {
                    mids = match pointers(base) {
                        Ok(top) => (0u64..)
                            .zip(top)
                            .filter(|&(_, v)| v != 0)
                            .map(|(i, v)| (v, i * 512))
                            .collect(),
                        Err(e) => {
                            skipped.push((Va(base), e));
                            vec![]
                        }
                    };
                }
                for (m, first) in mids {
                    match pointers(m) {
                        Ok(mid) => leaves.extend(
                            (0u64..)
                                .zip(mid)
                                .filter(|&(_, leaf)| leaf != 0)
                                .map(|(i, leaf)| (leaf, first + i)),
                        ),
                        Err(e) => skipped.push((Va(m), e)),
                    }
                }
            }
            _ => {
                return Err(error::malformed(
                    "HANDLE_TABLE.TableCode",
                    table,
                    format!("level {level}"),
                ));
            }
        }
        let mut out = vec![];
        let mut types = std::collections::HashMap::new();
        for (leaf, leaf_index) in leaves {
            let mut page = vec![0u8; 0x1000];
            if let Err(e) = core.read(self.k(Va(leaf & !0xFFF)), &mut page) {
                skipped.push((Va(leaf), e));
                continue;
            }
            for i in 0..per {
                let at = (i * esz) as usize;
                let field = |b: offsets::Bits| {
                    let i = at + b.offset as usize;
                    // The last entry's access field may end the page: read what is there.
                    let mut q = [0u8; 8];
                    let avail = page.len().saturating_sub(i).min(8);
                    q[..avail].copy_from_slice(&page[i..i + avail]);
                    b.get(u64::from_le_bytes(q))
                };
                let q0 = field(o.hte_object);
                let qa = field(o.hte_access);
                let header = if o.hte_ptr_bits {
                    let bits = q0;
                    if bits == 0 {
                        continue;
                    }
                    canon((bits << 4) | 0xFFFF_0000_0000_0000)
                } else {
                    let v = q0 & !7;
                    if v == 0 {
                        continue;
                    }
                    v
                };
                if out.len() >= MAX_HANDLES {
                    return Err(VmiError::WalkLimit {
                        what: "handle table",
                        count: out.len(),
                        reason: "limit",
                    });
                }
                let header = Va(header);
                let ti = match self.object_type_index(core, header) {
                    Ok(ti) => ti,
                    Err(e) => {
                        skipped.push((header, e));
                        continue;
                    }
                };
                let type_name = types
                    .entry(ti)
                    .or_insert_with(|| self.type_name(core, ti))
                    .clone();
                let object = header + o.oh_body;
                let name = self
                    .handle_name(core, header, object, type_name.as_deref())
                    .ok()
                    .flatten();
                out.push(WinHandle {
                    handle: (leaf_index * per + i) * 4,
                    object,
                    type_index: ti,
                    type_name,
                    access: qa as u32,
                    name,
                });
            }
        }
        Listing::new(out, skipped)
    }

    fn handle_name<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        header: Va,
        object: Va,
        ty: Option<&str>,
    ) -> Result<Option<String>, VmiError> {
        Ok(match ty {
            Some("Process") => {
                let p = self.process_at(core, object)?;
                Some(format!("{} Pid {}", p.name, p.pid))
            }
            Some("Thread") => {
                let t = self.thread_at(core, object)?;
                Some(format!("Tid {} Pid {}", t.tid, t.pid))
            }
            Some("File") => {
                let name = self.read_unicode_string(core, self.root, object + self.off.fo_name)?;
                let dev = self.kq(core, object + self.off.fo_device)?;
                let dev_name = if dev == 0 {
                    None
                } else {
                    self.object_name(core, Va(dev).checked_sub(self.off.oh_body).unwrap_or(Va(0)))?
                };
                Some(match dev_name {
                    Some(d) => format!("\\Device\\{d}{name}"),
                    None => name,
                })
            }
            _ => self.object_name(core, header)?,
        })
    }
}
