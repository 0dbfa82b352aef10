//! Memory regions: a process's VAD tree, with protections, pool tags and mapped files.

use std::collections::HashSet;

use vmi_core::{RegionProtection, Va, VmiCore, VmiError, VmiRead};

use crate::offsets;
use crate::{Listing, MAX_VADS, Skipped, WinProcess, WindowsOs};

/// A VAD (virtual address descriptor).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WinVad {
    /// Node address.
    pub node: Va,
    /// First byte.
    pub start: Va,
    /// Last byte (inclusive).
    pub end: Va,
    /// MM protection index (0..31).
    pub protection: u8,
    /// Private memory (not a mapped section).
    pub private: bool,
    /// Pool tag before the node, when readable (`VadS`, `Vad `...).
    pub tag: Option<String>,
    /// Backing file name (as the FILE_OBJECT stores it, without the device).
    pub file: Option<String>,
}

impl WinVad {
    /// Access rights of the MM protection index.
    pub fn rights(&self) -> RegionProtection {
        let (read, write, execute) = match self.protection & 7 {
            0 => (false, false, false),
            1 => (true, false, false),
            2 => (false, false, true),
            3 => (true, false, true),
            4 | 5 => (true, true, false),
            _ => (true, true, true),
        };
        RegionProtection {
            read,
            write,
            execute,
        }
    }

    /// The `PAGE_*` name Volatility prints.
    pub fn protection_name(&self) -> &'static str {
        [
            "PAGE_NOACCESS",
            "PAGE_READONLY",
            "PAGE_EXECUTE",
            "PAGE_EXECUTE_READ",
            "PAGE_READWRITE",
            "PAGE_WRITECOPY",
            "PAGE_EXECUTE_READWRITE",
            "PAGE_EXECUTE_WRITECOPY",
        ][usize::from(self.protection & 7)]
    }
}

impl WindowsOs {
    /// The VAD tree of a process, in address order; an error if any node could not be
    /// read (see [`vad_list`](Self::vad_list)).
    pub fn vads<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        p: &WinProcess,
    ) -> Result<Vec<WinVad>, VmiError> {
        self.vad_list(core, p)?.complete()
    }

    /// The VADs that can be read, in address order, and what was skipped: an unreadable
    /// node costs its subtree, a node reached twice (a cycle) is skipped there.
    pub fn vad_list<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        p: &WinProcess,
    ) -> Result<Listing<WinVad>, VmiError> {
        let o = &self.off;
        let root_at = p.eprocess + o.ep_vad_root;
        let root = self.kq(core, root_at)?;
        let mut out = vec![];
        let mut skipped: Skipped = vec![];
        let mut seen = HashSet::new();
        // (node, the field that pointed to it)
        let mut stack = vec![(root, root_at)];
        while let Some((node, from)) = stack.pop() {
            if node == 0 {
                continue;
            }
            if !seen.insert(node) {
                skipped.push((
                    from,
                    VmiError::WalkLimit {
                        what: "VAD tree",
                        count: out.len(),
                        reason: "cycle",
                    },
                ));
                continue;
            }
            if seen.len() > MAX_VADS {
                skipped.push((
                    from,
                    VmiError::WalkLimit {
                        what: "VAD tree",
                        count: out.len(),
                        reason: "limit",
                    },
                ));
                break;
            }
            let n = Va(node);
            let children = self
                .kq(core, n + o.vad_right)
                .and_then(|r| Ok((r, self.kq(core, n + o.vad_left)?)));
            match children {
                Ok((right, left)) => {
                    stack.push((right, n + o.vad_right));
                    stack.push((left, n + o.vad_left));
                }
                Err(e) => {
                    skipped.push((n, e));
                    continue;
                }
            }
            match self.vad_at(core, n) {
                Ok(v) => out.push(v),
                Err(e) => skipped.push((n, e)),
            }
        }
        out.sort_by_key(|v| v.start);
        Listing::new(out, skipped)
    }

    fn vad_at<D: VmiRead>(&self, core: &VmiCore<D>, n: Va) -> Result<WinVad, VmiError> {
        let o = &self.off;
        let vpn = |lo: u64, hi: Option<u64>| -> Result<u64, VmiError> {
            let l = u64::from(core.read_u32(self.k(n + lo))?);
            let h = match hi {
                Some(h) => u64::from(core.read_u8(self.k(n + h))?),
                None => 0,
            };
            Ok(l | (h << 32))
        };
        let (sv, ev) = if o.vad_start_high.is_none() {
            // Windows 7: StartingVpn/EndingVpn are full 64-bit values.
            (
                self.kq(core, n + o.vad_start)?,
                self.kq(core, n + o.vad_end)?,
            )
        } else {
            (
                vpn(o.vad_start, o.vad_start_high)?,
                vpn(o.vad_end, o.vad_end_high)?,
            )
        };
        let flags = |b: offsets::Bits| -> Result<u64, VmiError> {
            Ok(b.get(core.read_u64(self.k(n + b.offset))?))
        };
        let protection = flags(o.vad_protection)? as u8;
        let private = flags(o.vad_private)? != 0;
        let tag = {
            let mut t = [0u8; 4];
            core.read(self.k(Va(n.0.wrapping_sub(12))), &mut t)
                .ok()
                .filter(|_| t.iter().all(|c| c.is_ascii_graphic() || *c == b' '))
                .map(|_| String::from_utf8_lossy(&t).into_owned())
        };
        let file = if private {
            None
        } else {
            self.vad_file(core, n).ok().flatten()
        };
        Ok(WinVad {
            node: n,
            start: Va(sv << 12),
            // The last byte of page `ev`: `((ev + 1) << 12) - 1` without the overflow a
            // guest's EndingVpn of 2^64-1 would cause.
            end: Va((ev << 12) | 0xFFF),
            protection,
            private,
            tag,
            file,
        })
    }

    fn vad_file<D: VmiRead>(&self, core: &VmiCore<D>, n: Va) -> Result<Option<String>, VmiError> {
        let o = &self.off;
        let ss = self.kq(core, n + o.vad_subsection)?;
        if ss == 0 {
            return Ok(None);
        }
        let ca = self.kq(core, Va(ss) + o.subsection_ca)?;
        if ca == 0 {
            return Ok(None);
        }
        let fo = self.kq(core, Va(ca) + o.ca_file)? & !0xF;
        if fo == 0 {
            return Ok(None);
        }
        Ok(Some(self.read_unicode_string(
            core,
            self.root,
            Va(fo) + o.fo_name,
        )?))
    }
}
