//! Processes: the `EPROCESS` list, image paths, command lines, environments.

use vmi_core::{AccessContext, Pa, Va, VmiCore, VmiError, VmiRead};

use crate::walk;
use crate::{ADDR, Listing, MAX_LIST, WindowsOs};

/// A process with everything Windows keeps about it that this layer reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WinProcess {
    /// Process id.
    pub pid: u64,
    /// Parent process id.
    pub ppid: u64,
    /// `ImageFileName` (at most 15 bytes).
    pub name: String,
    /// EPROCESS address.
    pub eprocess: Va,
    /// Page-table root (PCID and flag bits removed).
    pub dtb: Pa,
    /// `DirectoryTableBase` as stored.
    pub directory_table_base: u64,
    /// PEB (0 for the System process).
    pub peb: Va,
    /// Session id (`None` without a session).
    pub session: Option<u32>,
    /// CreateTime (FILETIME).
    pub create_time: u64,
    /// ExitTime (FILETIME, 0 while running).
    pub exit_time: u64,
    /// A WoW64 (32-bit) process.
    pub wow64: bool,
    /// `ActiveThreads`.
    pub active_threads: u32,
}

impl WindowsOs {
    /// Reads the process whose EPROCESS is at `ep`.
    pub fn process_at<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        ep: Va,
    ) -> Result<WinProcess, VmiError> {
        let o = &self.off;
        let mut name = [0u8; 15];
        core.read(self.k(ep + o.ep_name), &mut name)?;
        let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
        let session_ptr = self.kq(core, ep + o.ep_session)?;
        let session = if session_ptr == 0 {
            None
        } else {
            Some(core.read_u32(self.k(Va(session_ptr) + o.session_id))?)
        };
        let dtb_raw = self.kq(core, ep + o.ep_dtb)?;
        let wow64 = match o.ep_wow64 {
            Some(w) => self.kq(core, ep + w)? != 0,
            None => false,
        };
        Ok(WinProcess {
            pid: self.kq(core, ep + o.ep_pid)?,
            ppid: self.kq(core, ep + o.ep_ppid)?,
            name: String::from_utf8_lossy(&name[..end]).into_owned(),
            eprocess: ep,
            dtb: Pa(dtb_raw & ADDR),
            directory_table_base: dtb_raw,
            peb: Va(self.kq(core, ep + o.ep_peb)?),
            session,
            create_time: self.kq(core, ep + o.ep_create_time)?,
            exit_time: self.kq(core, ep + o.ep_exit_time)?,
            wow64,
            active_threads: core.read_u32(self.k(ep + o.ep_active_threads))?,
        })
    }

    /// Every process on `PsActiveProcessHead`; an error if any link or process could not
    /// be read (see [`process_list`](Self::process_list) for what can be read).
    pub fn win_processes<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
    ) -> Result<Vec<WinProcess>, VmiError> {
        self.process_list(core)?.complete()
    }

    /// The processes on `PsActiveProcessHead` that can be read, and what was skipped: a
    /// broken link costs only the processes between it and the next break (the walk
    /// resumes backwards from the head), an unreadable `EPROCESS` only itself.
    pub fn process_list<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
    ) -> Result<Listing<WinProcess>, VmiError> {
        let head = self.sym(self.off.ps_active_process_head);
        let walk = walk::walk_list(core, self.root, head, "PsActiveProcessHead list", MAX_LIST);
        let mut skipped = walk.errors;
        let mut items = Vec::with_capacity(walk.nodes.len());
        for l in walk.nodes {
            let ep = Va(l.0.wrapping_sub(self.off.ep_links));
            match self.process_at(core, ep) {
                Ok(p) => items.push(p),
                Err(e) => skipped.push((ep, e)),
            }
        }
        Listing::new(items, skipped)
    }

    /// The process with `pid`, among those that can be read.
    pub fn win_process<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        pid: u64,
    ) -> Result<WinProcess, VmiError> {
        let list = self.process_list(core)?;
        let skipped = list.skipped.len();
        list.items
            .into_iter()
            .find(|p| p.pid == pid)
            .ok_or_else(|| VmiError::NotFound {
                kind: "process",
                name: if skipped == 0 {
                    pid.to_string()
                } else {
                    format!("{pid} (the process list skipped {skipped} unreadable objects)")
                },
            })
    }

    fn params<D: VmiRead>(&self, core: &VmiCore<D>, p: &WinProcess) -> Result<Va, VmiError> {
        if p.peb.0 == 0 {
            return Err(VmiError::NotFound {
                kind: "PEB of process",
                name: p.pid.to_string(),
            });
        }
        Ok(Va(self.read_process_u64(
            core,
            p,
            p.peb + self.off.peb_params,
        )?))
    }

    /// Full image path (`ProcessParameters.ImagePathName`).
    pub fn image_path<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        p: &WinProcess,
    ) -> Result<String, VmiError> {
        let pp = self.params(core, p)?;
        self.read_unicode_string(core, p.dtb, pp + self.off.pp_image)
    }

    /// NT image path from `SeAuditProcessCreationInfo` (works for every process).
    pub fn nt_image_path<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        p: &WinProcess,
    ) -> Result<String, VmiError> {
        let at = self.off.ep_audit_name.ok_or(VmiError::NotSupported {
            operation: "SeAuditProcessCreationInfo",
            by: "this Windows build",
        })?;
        let oni = self.kq(core, p.eprocess + at)?;
        if oni == 0 {
            return Err(VmiError::NotFound {
                kind: "audit image name of process",
                name: p.pid.to_string(),
            });
        }
        self.read_unicode_string(core, self.root, Va(oni))
    }

    /// Command line (`ProcessParameters.CommandLine`).
    pub fn command_line<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        p: &WinProcess,
    ) -> Result<String, VmiError> {
        let pp = self.params(core, p)?;
        self.read_unicode_string(core, p.dtb, pp + self.off.pp_cmdline)
    }

    /// Environment variables, in block order (bounded to 1 MiB).
    pub fn environment<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        p: &WinProcess,
    ) -> Result<Vec<(String, String)>, VmiError> {
        let pp = self.params(core, p)?;
        let env = Va(self.read_process_u64(core, p, pp + self.off.pp_env)?);
        let size = match self.off.pp_env_size {
            Some(s) => self.read_process_u64(core, p, pp + s)? as usize,
            None => 0x1_0000,
        }
        .min(1 << 20);
        let mut buf = vec![0u8; size & !1];
        let n = core.read_available(AccessContext::paging(env, p.dtb), &mut buf);
        let units: Vec<u16> = buf[..n & !1]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        let mut out = vec![];
        for s in units.split(|&u| u == 0) {
            if s.is_empty() {
                break;
            }
            let text = String::from_utf16_lossy(s);
            // Variables like "=C:" start with '=': split after the first character.
            let split = text
                .char_indices()
                .skip(1)
                .find(|&(_, c)| c == '=')
                .map(|(i, _)| i);
            match split {
                Some(i) => out.push((text[..i].to_owned(), text[i + 1..].to_owned())),
                None => out.push((text, String::new())),
            }
        }
        Ok(out)
    }
}
