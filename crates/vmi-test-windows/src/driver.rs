//! [`ImageDriver`]: a test-only driver over an in-memory raw image.

use std::ops::Range;
use std::sync::Arc;

use vmi_arch_amd64::{Amd64, Registers};
use vmi_core::{
    Gfn, Pa, PageAbsence, VcpuId, VmiDriver, VmiError, VmiInfo, VmiQueryRegisters, VmiRead,
};

/// Reads a raw physical image held in memory; optionally reports vCPU 0's registers.
#[derive(Clone, Debug)]
pub struct ImageDriver {
    bytes: Arc<Vec<u8>>,
    registers: Option<Registers>,
}

impl ImageDriver {
    /// A driver over `bytes`, with `registers` as vCPU 0 when given.
    pub fn new(bytes: Vec<u8>, registers: Option<Registers>) -> Self {
        Self {
            bytes: Arc::new(bytes),
            registers,
        }
    }
}

impl VmiDriver for ImageDriver {
    type Architecture = Amd64;

    fn info(&self) -> Result<VmiInfo, VmiError> {
        Ok(VmiInfo {
            page_size: 0x1000,
            max_gfn: Gfn((self.bytes.len() as u64).saturating_sub(1) / 0x1000),
            vcpus: u16::from(self.registers.is_some()),
            live: false,
            cache_pages: false,
            kind: "raw",
        })
    }
}

impl VmiRead for ImageDriver {
    fn read_page(&self, gfn: Gfn, offset: usize, buf: &mut [u8]) -> Result<(), VmiError> {
        if offset + buf.len() > 0x1000 {
            return Err(VmiError::InvalidArgument(format!(
                "read of {} bytes at page offset {offset}",
                buf.len()
            )));
        }
        let start = gfn
            .0
            .checked_mul(0x1000)
            .and_then(|s| usize::try_from(s).ok())
            .and_then(|s| s.checked_add(offset));
        match start.and_then(|s| self.bytes.get(s..s + buf.len())) {
            Some(src) => {
                buf.copy_from_slice(src);
                Ok(())
            }
            None => Err(VmiError::PageUnavailable {
                gfn,
                reason: PageAbsence::BeyondMemory,
            }),
        }
    }

    fn physical_ranges(&self) -> Result<Vec<Range<Pa>>, VmiError> {
        Ok(vec![Pa(0)..Pa(self.bytes.len() as u64)])
    }
}

impl VmiQueryRegisters for ImageDriver {
    fn registers(&self, vcpu: VcpuId) -> Result<Registers, VmiError> {
        match (&self.registers, vcpu.0) {
            (Some(r), 0) => Ok(r.clone()),
            _ => Err(VmiError::NotFound {
                kind: "vcpu",
                name: vcpu.to_string(),
            }),
        }
    }
}
