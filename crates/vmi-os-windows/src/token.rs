//! Tokens: a process's user and group SIDs and privileges.

use vmi_core::{Va, VmiCore, VmiError, VmiRead};

use crate::error;
use crate::{WinProcess, WindowsOs};

/// A SID with its attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WinSid {
    /// `S-1-...` form.
    pub sid: String,
    /// SID_AND_ATTRIBUTES.Attributes.
    pub attributes: u32,
}

/// A process token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WinToken {
    /// `_TOKEN` address.
    pub address: Va,
    /// User first, then groups.
    pub sids: Vec<WinSid>,
    /// Privileges present (bit = LUID low part), when the build has the bitmap.
    pub privileges_present: Option<u64>,
    /// Privileges enabled.
    pub privileges_enabled: Option<u64>,
    /// Privileges enabled by default.
    pub privileges_default: Option<u64>,
}

impl WindowsOs {
    /// The token of a process: SIDs (user first) and privilege bitmaps.
    pub fn token<D: VmiRead>(
        &self,
        core: &VmiCore<D>,
        p: &WinProcess,
    ) -> Result<WinToken, VmiError> {
        let o = &self.off;
        let t = Va(self.kq(core, p.eprocess + o.ep_token)? & !0xF);
        let count = core.read_u32(self.k(t + o.tok_count))?;
        if count > 1024 {
            return Err(error::malformed(
                "TOKEN.UserAndGroupCount",
                t.0,
                format!("{count} groups"),
            ));
        }
        let arr = Va(self.kq(core, t + o.tok_groups)?);
        let mut sids = vec![];
        for i in 0..u64::from(count) {
            let e = arr + i * o.sa_size;
            let sid = Va(self.kq(core, e + o.sa_sid)?);
            let attributes = core.read_u32(self.k(e + o.sa_attrs))?;
            sids.push(WinSid {
                sid: self.read_sid(core, sid)?,
                attributes,
            });
        }
        let opt = |f: Option<u64>| -> Result<Option<u64>, VmiError> {
            f.map(|f| self.kq(core, t + f)).transpose()
        };
        Ok(WinToken {
            address: t,
            sids,
            privileges_present: opt(o.tok_present)?,
            privileges_enabled: opt(o.tok_enabled)?,
            privileges_default: opt(o.tok_default)?,
        })
    }

    fn read_sid<D: VmiRead>(&self, core: &VmiCore<D>, at: Va) -> Result<String, VmiError> {
        let mut h = [0u8; 8];
        core.read(self.k(at), &mut h)?;
        let n = usize::from(h[1]);
        if h[0] != 1 || n > 15 {
            return Err(error::malformed(
                "SID",
                at.0,
                format!("revision {} with {n} sub-authorities", h[0]),
            ));
        }
        let auth = h[2..8].iter().fold(0u64, |a, &b| (a << 8) | u64::from(b));
        let mut s = format!("S-1-{auth}");
        let mut subs = vec![0u8; n * 4];
        core.read(self.k(at + 8), &mut subs)?;
        for c in subs.chunks_exact(4) {
            s.push_str(&format!(
                "-{}",
                u32::from_le_bytes([c[0], c[1], c[2], c[3]])
            ));
        }
        Ok(s)
    }
}
