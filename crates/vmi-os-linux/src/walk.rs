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

/// Why one link could not be followed, and the node it pointed to when that node is
/// readable but does not point back.
struct Broken {
    error: VmiError,
    target: Option<Va>,
}

/// Follows one link (`next` at offset 0 or `prev` at offset 8) from `cur`. Stops before
/// the back check when the target is the head or already visited (`join`), else checks
/// that the node reached links back to `cur`.
fn step<D: VmiRead<Architecture = Amd64>>(
    k: &Kmem<'_, D>,
    cur: Va,
    forward: bool,
    what: &'static str,
    join: impl Fn(Va) -> bool,
) -> Result<Va, Broken> {
    let (there, back) = if forward { (0, 8) } else { (8, 0) };
    let next = k.ptr(cur + there, what).map_err(|error| Broken {
        error,
        target: None,
    })?;
    if join(next) {
        return Ok(next);
    }
    let back_ptr = k.u64(next + back).map_err(|error| Broken {
        error,
        target: None,
    })?;
    if back_ptr != cur.0 {
        return Err(Broken {
            error: malformed(
                what,
                cur.0,
                format!(
                    "link to {next} does not point back (its {} is {back_ptr:#x})",
                    if forward { "prev" } else { "next" }
                ),
            ),
            target: Some(next),
        });
    }
    Ok(next)
}

/// Walks the circular list whose head is at `head`, visiting at most `limit` nodes.
///
/// When the forward walk breaks, the rest is walked backwards from the head. A node whose
/// own links are both broken is still kept when its two neighbours both point at it.
pub(crate) fn walk_list<D: VmiRead<Architecture = Amd64>>(
    k: &Kmem<'_, D>,
    head: Va,
    what: &'static str,
    limit: usize,
) -> ListWalk {
    let mut out = ListWalk::default();
    let mut seen: HashSet<Va> = HashSet::new();
    seen.insert(head);
    let limit_error = |count| VmiError::WalkLimit {
        what,
        count,
        reason: "limit",
    };
    let mut cur = head;
    let dangling = loop {
        if out.nodes.len() >= limit {
            out.errors.push((cur, limit_error(out.nodes.len())));
            return out;
        }
        match step(k, cur, true, what, |n| seen.contains(&n)) {
            Ok(next) if next == head => return out,
            Ok(next) if seen.contains(&next) => {
                // Back to a visited node: a cycle that misses the head.
                out.errors.push((
                    cur,
                    VmiError::WalkLimit {
                        what,
                        count: out.nodes.len(),
                        reason: "cycle",
                    },
                ));
                break None;
            }
            Ok(next) => {
                seen.insert(next);
                out.nodes.push(next);
                cur = next;
            }
            Err(Broken { error, target }) => {
                out.errors.push((cur, error));
                break target;
            }
        }
    };
    // Broken forward: recover the tail backwards from the head.
    let mut back = Vec::new();
    let mut cur = head;
    while out.nodes.len() + back.len() < limit {
        match step(k, cur, false, what, |n| seen.contains(&n)) {
            Ok(prev) if seen.contains(&prev) => break,
            Ok(prev) => {
                seen.insert(prev);
                back.push(prev);
                cur = prev;
            }
            Err(Broken { error, target }) => {
                out.errors.push((cur, error));
                // Both neighbours point at the same node: keep it.
                if let Some(t) = target
                    && dangling == Some(t)
                    && seen.insert(t)
                {
                    back.push(t);
                }
                break;
            }
        }
    }
    if out.nodes.len() + back.len() >= limit {
        out.errors
            .push((cur, limit_error(out.nodes.len() + back.len())));
    }
    out.nodes.extend(back.into_iter().rev());
    out
}
