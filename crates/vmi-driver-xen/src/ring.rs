//! The back end of the vm_event ring (`xen/io/ring.h`, written again in Rust).
//!
//! Xen produces requests into a shared 4 KiB page and we consume them, then produce
//! responses into the slots the requests freed. The page: a 64-byte header
//! (`req_prod`, `req_event`, `rsp_prod`, `rsp_event`, padding) and then fixed-size
//! entries. The number of slots is `(page - header) / entry` rounded **down** to a power
//! of two, 8 for v7's 400-byte entries; it is never derived from `size_of` of the C
//! shared-ring struct, whose size changes with the header version (`ring[1]` vs a
//! flexible array).
//!
//! The page is shared with the hypervisor, so the ring only touches it through
//! [`RingMemory`] (atomic index loads/stores, byte copies), copies each request out
//! before parsing it, and bounds everything by the slot count: a misbehaving producer
//! can make us see garbage requests, never read out of the page or loop forever.

use zerocopy::{FromBytes, IntoBytes};

use crate::abi::{VmEvent, XEN_PAGE_SIZE, sring};

/// The shared ring page, as the ring needs to touch it.
///
/// Offsets are always within the page and 4-byte aligned for the `u32` accessors; the
/// ring computes them from masked indices.
pub trait RingMemory: Send {
    /// Loads a `u32` index with acquire ordering.
    fn load_u32(&self, offset: usize) -> u32;
    /// Stores a `u32` index with release ordering (and a full fence after it).
    fn store_u32(&self, offset: usize, value: u32);
    /// Copies bytes out of the page.
    fn read(&self, offset: usize, buf: &mut [u8]);
    /// Copies bytes into the page.
    fn write(&self, offset: usize, data: &[u8]);
}

/// Number of ring slots for entries of `entry_size` bytes in a page of `page_size`:
/// the largest power of two that fits after the 64-byte header (`__RING_SIZE`).
pub const fn ring_slots(page_size: usize, entry_size: usize) -> u32 {
    if entry_size == 0 || page_size <= sring::HEADER {
        return 0;
    }
    let n = (page_size - sring::HEADER) / entry_size;
    if n == 0 {
        return 0;
    }
    // round down to a power of two
    1 << (usize::BITS - 1 - n.leading_zeros())
}

/// Slots of the vm_event ring: 8.
pub const VM_EVENT_RING_SLOTS: u32 = ring_slots(XEN_PAGE_SIZE, size_of::<VmEvent>());

/// A request slot's raw content and where it sat (for diagnostics).
#[derive(Clone, Debug)]
pub struct RawRequest {
    /// The ring index it was consumed at (free-running).
    pub index: u32,
    /// The request as copied out of the page.
    pub event: VmEvent,
}

/// Ring errors: our own misuse, never the producer's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RingError {
    /// More responses than consumed requests.
    #[error("no consumed request left to answer ({consumed} consumed, {answered} answered)")]
    NoSlotForResponse {
        /// Requests consumed so far.
        consumed: u32,
        /// Responses produced so far.
        answered: u32,
    },
}

/// Our (consumer) side of the vm_event ring: `BACK_RING` in C.
pub struct BackRing {
    mem: Box<dyn RingMemory>,
    req_cons: u32,
    rsp_prod_pvt: u32,
    slots: u32,
}

impl std::fmt::Debug for BackRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackRing")
            .field("req_cons", &self.req_cons)
            .field("rsp_prod_pvt", &self.rsp_prod_pvt)
            .field("slots", &self.slots)
            .finish()
    }
}

impl BackRing {
    /// Initialises the shared page (`SHARED_RING_INIT`: indices 0, event indices 1,
    /// header padding zeroed) and our private indices (`BACK_RING_INIT`).
    pub fn init(mem: Box<dyn RingMemory>) -> Self {
        mem.write(16, &[0u8; sring::HEADER - 16]);
        mem.store_u32(sring::REQ_PROD, 0);
        mem.store_u32(sring::RSP_PROD, 0);
        mem.store_u32(sring::REQ_EVENT, 1);
        mem.store_u32(sring::RSP_EVENT, 1);
        Self {
            mem,
            req_cons: 0,
            rsp_prod_pvt: 0,
            slots: VM_EVENT_RING_SLOTS,
        }
    }

    /// Number of slots.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// Requests produced and not consumed yet, bounded by the free response slots
    /// (`RING_HAS_UNCONSUMED_REQUESTS`): never more than [`Self::slots`].
    pub fn unconsumed_requests(&self) -> u32 {
        let req_prod = self.mem.load_u32(sring::REQ_PROD);
        let req = req_prod.wrapping_sub(self.req_cons);
        let in_flight = self.req_cons.wrapping_sub(self.rsp_prod_pvt);
        let rsp = self.slots.saturating_sub(in_flight);
        req.min(rsp)
    }

    fn slot_offset(&self, index: u32) -> usize {
        sring::HEADER + (index & (self.slots - 1)) as usize * size_of::<VmEvent>()
    }

    /// Copies out the next request, if any (`RING_COPY_REQUEST`), and consumes it.
    pub fn take_request(&mut self) -> Option<RawRequest> {
        if self.unconsumed_requests() == 0 {
            return None;
        }
        let index = self.req_cons;
        let mut bytes = [0u8; size_of::<VmEvent>()];
        self.mem.read(self.slot_offset(index), &mut bytes);
        self.req_cons = self.req_cons.wrapping_add(1);
        // Infallible: the array has exactly the struct's size and every bit pattern is valid.
        let event = VmEvent::read_from_bytes(&bytes).unwrap_or_default();
        Some(RawRequest { index, event })
    }

    /// Writes a response into the next response slot (not visible until
    /// [`Self::push_responses`]).
    pub fn put_response(&mut self, rsp: &VmEvent) -> Result<(), RingError> {
        if self.rsp_prod_pvt == self.req_cons {
            return Err(RingError::NoSlotForResponse {
                consumed: self.req_cons,
                answered: self.rsp_prod_pvt,
            });
        }
        let off = self.slot_offset(self.rsp_prod_pvt);
        self.mem.write(off, rsp.as_bytes());
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Publishes the responses written so far (`RING_PUSH_RESPONSES`).
    pub fn push_responses(&mut self) {
        self.mem.store_u32(sring::RSP_PROD, self.rsp_prod_pvt);
    }

    /// Asks for a notification at the next request and re-checks for requests that
    /// raced with it (`RING_FINAL_CHECK_FOR_REQUESTS`). Returns whether any are there.
    pub fn final_check_for_requests(&mut self) -> bool {
        if self.unconsumed_requests() > 0 {
            return true;
        }
        self.mem
            .store_u32(sring::REQ_EVENT, self.req_cons.wrapping_add(1));
        self.unconsumed_requests() > 0
    }

    /// Requests consumed and not answered yet.
    pub fn pending_responses(&self) -> u32 {
        self.req_cons.wrapping_sub(self.rsp_prod_pvt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_event_ring_has_eight_slots() {
        assert_eq!(size_of::<VmEvent>(), 400);
        assert_eq!(VM_EVENT_RING_SLOTS, 8);
        assert_eq!(ring_slots(4096, 4096), 0);
        assert_eq!(ring_slots(4096, 0), 0);
        assert_eq!(ring_slots(4096, 1), 2048);
        assert_eq!(ring_slots(4096, 112), 32);
    }
}
