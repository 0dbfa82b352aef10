//! Bounded walks of the kernel's circular `list_head` lists, safe on hostile guests.
//!
//! Every link is checked (a canonical, aligned kernel pointer whose `prev` points back),
//! every node is visited once (a cycle that does not return to the head stops the walk),
//! and the walk stops after a limit. When a link is broken the walk goes on from the
//! other end — backwards from the head through the `prev` pointers — so one corrupted
//! node costs only the nodes between the two breaks, and the break is reported.

use std::collections::HashSet;

use vmi_arch_amd64::Amd64;
use vmi_core::{Va, VmiError, VmiRead};

use crate::kmem::{Kmem, malformed};

/// The nodes of a list, in order, and what stopped the walk early.
#[derive(Debug, Default)]
pub(crate) struct ListWalk {
    /// Addresses of the `list_head`s of the entries (the head itself excluded).
    pub(crate) nodes: Vec<Va>,
    /// Broken links: the node whose link could not be followed, and why.
    pub(crate) errors: Vec<(Va, VmiError)>,
}

/// Follows one link (`next` at offset 0 or `prev` at offset 8) from `cur`, checking that
/// the node it reaches links back.
fn step<D: VmiRead<Architecture = Amd64>>(
    k: &Kmem<'_, D>,
    cur: Va,
    forward: bool,
    what: &'static str,
) -> Result<Va, VmiError> {
    let (there, back) = if forward { (0, 8) } else { (8, 0) };
    let next = k.ptr(cur + there, what)?;
    let back_ptr = k.u64(next + back)?;
    if back_ptr != cur.0 {
        return Err(malformed(
            what,
            cur.0,
            format!(
                "link to {next} does not point back (its {} is {back_ptr:#x})",
                if forward { "prev" } else { "next" }
            ),
        ));
    }
    Ok(next)
}

/// Walks the circular list whose head is at `head`, visiting at most `limit` nodes.
pub(crate) fn walk_list<D: VmiRead<Architecture = Amd64>>(
    k: &Kmem<'_, D>,
    head: Va,
    what: &'static str,
    limit: usize,
) -> ListWalk {
    let mut out = ListWalk::default();
    let mut seen: HashSet<Va> = HashSet::new();
    seen.insert(head);
    let mut cur = head;
    loop {
        if out.nodes.len() >= limit {
            out.errors.push((
                cur,
                VmiError::WalkLimit {
                    what,
                    count: out.nodes.len(),
                    reason: "limit",
                },
            ));
            return out;
        }
        match step(k, cur, true, what) {
            Ok(next) if next == head => return out,
            Ok(next) if !seen.insert(next) => {
                out.errors.push((
                    cur,
                    VmiError::WalkLimit {
                        what,
                        count: out.nodes.len(),
                        reason: "cycle",
                    },
                ));
                break;
            }
            Ok(next) => {
                out.nodes.push(next);
                cur = next;
            }
            Err(e) => {
                out.errors.push((cur, e));
                break;
            }
        }
    }
    // Broken forward: recover the tail backwards from the head.
    let mut back = Vec::new();
    let mut cur = head;
    while out.nodes.len() + back.len() < limit {
        match step(k, cur, false, what) {
            Ok(prev) if prev == head || seen.contains(&prev) => break,
            Ok(prev) => {
                seen.insert(prev);
                back.push(prev);
                cur = prev;
            }
            Err(e) => {
                out.errors.push((cur, e));
                break;
            }
        }
    }
    out.nodes.extend(back.into_iter().rev());
    out
}
