//! Bounded, recovering walks of `LIST_ENTRY` lists, safe on hostile guests (the Windows
//! counterpart of the Linux layer's `walk.rs`).
//!
//! Every link is checked (a non-null, canonical, 8-byte aligned pointer whose `Blink`
//! points back), every node is visited once (a cycle that does not return to the head
//! stops the walk), and the walk stops after a limit. When a link is broken the walk goes
//! on from the other end, backwards from the head through the `Blink` pointers, so one
//! corrupted entry costs only the entries between the two breaks, and each break is
//! reported with the address of the entry whose link could not be followed.

use std::collections::HashSet;

use vmi_core::{AccessContext, Pa, Va, VmiCore, VmiError, VmiRead};

use crate::error::malformed;

/// The entries of a list, in order, and what stopped the walk early.
#[derive(Debug, Default)]
pub(crate) struct ListWalk {
    /// Addresses of the `LIST_ENTRY`s of the entries (the head itself excluded).
    pub(crate) nodes: Vec<Va>,
    /// Broken links: the entry whose link could not be followed, and why.
    pub(crate) errors: Vec<(Va, VmiError)>,
}

/// Why one link could not be followed, and the entry it pointed to when that entry is
/// readable but does not point back.
struct Broken {
    error: VmiError,
    target: Option<Va>,
}

fn canonical(v: u64) -> bool {
    let top = v >> 47;
    top == 0 || top == 0x1_FFFF
}

/// Follows `Flink` (forward) or `Blink` from `cur`; stops before the back check when the
/// target is the head or already visited (`join`).
fn step<D: VmiRead>(
    core: &VmiCore<D>,
    root: Pa,
    cur: Va,
    forward: bool,
    what: &'static str,
    join: impl Fn(Va) -> bool,
) -> Result<Va, Broken> {
    let (there, back) = if forward { (0, 8) } else { (8, 0) };
    let broken = |error| Broken {
        error,
        target: None,
    };
    let raw = core
        .read_u64(AccessContext::paging(cur + there, root))
        .map_err(broken)?;
    if raw == 0 || !canonical(raw) || raw & 7 != 0 {
        return Err(broken(malformed(
            what,
            cur.0,
            format!(
                "{} {raw:#x} is not a list entry pointer",
                if forward { "Flink" } else { "Blink" }
            ),
        )));
    }
    let next = Va(raw);
    if join(next) {
        return Ok(next);
    }
    let back_ptr = core
        .read_u64(AccessContext::paging(next + back, root))
        .map_err(broken)?;
    if back_ptr != cur.0 {
        return Err(Broken {
            error: malformed(
                what,
                cur.0,
                format!(
                    "link to {next} does not point back (its {} is {back_ptr:#x})",
                    if forward { "Blink" } else { "Flink" }
                ),
            ),
            target: Some(next),
        });
    }
    Ok(next)
}

/// Walks the circular list whose head is at `head` (in address space `root`), visiting at
/// most `limit` entries. When the forward walk breaks, the rest is walked backwards from
/// the head; an entry whose own links are both broken is still kept when its two
/// neighbours both point at it.
pub(crate) fn walk_list<D: VmiRead>(
    core: &VmiCore<D>,
    root: Pa,
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
        match step(core, root, cur, true, what, |n| seen.contains(&n)) {
            Ok(next) if next == head => return out,
            Ok(next) if seen.contains(&next) => {
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
    let mut back = Vec::new();
    let mut cur = head;
    while out.nodes.len() + back.len() < limit {
        match step(core, root, cur, false, what, |n| seen.contains(&n)) {
            Ok(prev) if seen.contains(&prev) => break,
            Ok(prev) => {
                seen.insert(prev);
                back.push(prev);
                cur = prev;
            }
            Err(Broken { error, target }) => {
                out.errors.push((cur, error));
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
