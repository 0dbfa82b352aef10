//! The kernel log from the lockless printk ring buffer (Linux 5.10+, `kernel/printk/
//! printk_ringbuffer.c`): a descriptor ring of ids and states, an info array with sequence
//! numbers and timestamps, and a text data ring whose blocks start with the descriptor id.

use vmi_arch_amd64::Amd64;
use vmi_core::{Va, VmiCore, VmiError, VmiRead};

use crate::LinuxOs;
use crate::kmem::malformed;

/// One kernel log record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmesgRecord {
    /// Sequence number.
    pub seq: u64,
    /// Timestamp (nanoseconds since boot, local clock).
    pub ts_nsec: u64,
    /// The message text.
    pub text: String,
}

impl DmesgRecord {
    /// The lines as `dmesg` prints them: `[    1.234567] text`, the timestamp repeated
    /// on each line of a multi-line record (as the kernel's syslog formatting does).
    pub fn lines(&self) -> Vec<String> {
        vmi_core::log_lines(self.ts_nsec, &self.text)
    }
}

/// Descriptor states are the top two bits of `state_var` (`DESC_FLAGS_SHIFT` = 62).
const DESC_FLAGS_SHIFT: u32 = 62;
const DESC_ID_MASK: u64 = !(3u64 << DESC_FLAGS_SHIFT);
/// `desc_committed` and `desc_finalized`: records that are complete.
const DESC_COMMITTED: u64 = 1;
const DESC_FINALIZED: u64 = 2;
/// A data-less block position has bit 0 set (`FAILED_LPOS`, `EMPTY_LINE_LPOS`).
const LPOS_DATALESS: u64 = 1;
/// Most descriptor-ring bits accepted (the kernel's largest log is 2^25 bytes).
const MAX_COUNT_BITS: u32 = 24;
/// Descriptors read from guest memory at a time.
const DESC_BATCH: u64 = 1024;

impl LinuxOs {
    /// The kernel log records still in the ring buffer, oldest first.
    pub fn dmesg<D: VmiRead<Architecture = Amd64>>(
        &self,
        core: &VmiCore<D>,
    ) -> Result<Vec<DmesgRecord>, VmiError> {
        let o = self
            .offsets
            .printk
            .as_ref()
            .map_err(|e| crate::builder::os_error("the printk ring buffer", e.clone()))?;
        let k = self.kmem(core);
        let rb = k.ptr(Va(o.prb), "prb")?;
        let desc_ring = rb + o.desc_ring;
        let data_ring = rb + o.text_data_ring;
        let count_bits = k.u32(desc_ring + o.count_bits)?;
        if count_bits > MAX_COUNT_BITS {
            return Err(malformed(
                "prb_desc_ring.count_bits",
                desc_ring.0,
                count_bits.to_string(),
            ));
        }
        let count = 1u64 << count_bits;
        let descs = k.ptr(desc_ring + o.descs, "prb_desc_ring.descs")?;
        let infos = k.ptr(desc_ring + o.infos, "prb_desc_ring.infos")?;
        let head = k.u64(desc_ring + o.head_id)? & DESC_ID_MASK;
        let tail = k.u64(desc_ring + o.tail_id)? & DESC_ID_MASK;
        let size_bits = k.u32(data_ring + o.size_bits)?;
        let data_size = 1u64
            .checked_shl(size_bits)
            .filter(|&s| s <= self.limits.max_log_bytes as u64)
            .ok_or_else(|| {
                malformed(
                    "prb_data_ring.size_bits",
                    data_ring.0,
                    size_bits.to_string(),
                )
            })?;
        // The kernel sizes the descriptor ring at one descriptor per 32 bytes of text
        // (`PRB_AVGBITS`); more descriptors than text bytes is not a kernel's ring.
        if count_bits > size_bits {
            return Err(malformed(
                "prb_desc_ring.count_bits",
                desc_ring.0,
                format!("{count_bits} bits of descriptors for {size_bits} bits of text"),
            ));
        }
        // The live records are the ids tail..=head: at least one (the kernel starts with
        // head = tail) and never more than the ring holds.
        let n = head.wrapping_sub(tail).wrapping_add(1) & DESC_ID_MASK;
        if n == 0 || n > count {
            return Err(malformed(
                "prb_desc_ring.head_id",
                (desc_ring + o.head_id).0,
                format!(
                    "head id {head:#x} is {n} records past tail id {tail:#x} in a ring of {count}"
                ),
            ));
        }
        let data_va = k.ptr(data_ring + o.data, "prb_data_ring.data")?;
        let data = k.vec(data_va, data_size as usize)?;
        let rd = |buf: &[u8], off: u64, len: usize| -> u64 {
            let mut b = [0u8; 8];
            if let Some(s) = usize::try_from(off)
                .ok()
                .and_then(|off| buf.get(off..off.checked_add(len)?))
            {
                b[..len].copy_from_slice(s);
            }
            u64::from_le_bytes(b)
        };
        let array_bytes = |what: &'static str, at: Va, index: u64, len: u64, size: u64| {
            let bad = || {
                malformed(
                    what,
                    at.0,
                    format!("{len} records of {size} bytes at {index}"),
                )
            };
            let start = index.checked_mul(size).ok_or_else(bad)?;
            let bytes = len.checked_mul(size).ok_or_else(bad)?;
            Ok::<_, VmiError>((at.checked_add(start).ok_or_else(bad)?, bytes as usize))
        };
        let mut out = Vec::with_capacity(n.min(DESC_BATCH) as usize);
        // Descriptors and infos are read a batch at a time, only for the live ids: the
        // ring may claim 2^24 descriptors, which we must not allocate before reading.
        let mut i = 0u64;
        while i < n {
            let first = (tail.wrapping_add(i) & DESC_ID_MASK) & (count - 1);
            let len = DESC_BATCH.min(n - i).min(count - first);
            let (at, bytes) = array_bytes("prb_desc_ring.descs", descs, first, len, o.desc_size)?;
            let batch_descs = k.vec(at, bytes)?;
            let (at, bytes) = array_bytes("prb_desc_ring.infos", infos, first, len, o.info_size)?;
            let batch_infos = k.vec(at, bytes)?;
            for j in 0..len {
                let id = tail.wrapping_add(i + j) & DESC_ID_MASK;
                let d = j * o.desc_size;
                let state_var = rd(&batch_descs, d.saturating_add(o.state_var), 8);
                let state = state_var >> DESC_FLAGS_SHIFT;
                if state_var & DESC_ID_MASK != id
                    || (state != DESC_COMMITTED && state != DESC_FINALIZED)
                {
                    continue;
                }
                let lpos = d.saturating_add(o.text_blk_lpos);
                let begin = rd(&batch_descs, lpos.saturating_add(o.lpos_begin), 8);
                let next = rd(&batch_descs, lpos.saturating_add(o.lpos_next), 8);
                let inf = j * o.info_size;
                let seq = rd(&batch_infos, inf.saturating_add(o.seq), 8);
                let ts_nsec = rd(&batch_infos, inf.saturating_add(o.ts_nsec), 8);
                let text_len = rd(&batch_infos, inf.saturating_add(o.text_len), 2) as usize;
                let text = if begin & LPOS_DATALESS != 0 {
                    String::new()
                } else {
                    // A block that wraps is stored whole at the start of the ring.
                    let start = if begin >> size_bits == next >> size_bits {
                        begin & (data_size - 1)
                    } else {
                        0
                    } as usize;
                    // Skip the block's descriptor id.
                    let from = start + 8;
                    let bytes = data
                        .get(from..from.saturating_add(text_len).min(data.len()))
                        .unwrap_or(&[]);
                    String::from_utf8_lossy(bytes).into_owned()
                };
                out.push(DmesgRecord { seq, ts_nsec, text });
            }
            i += len;
        }
        out.sort_by_key(|r| r.seq);
        Ok(out)
    }
}
