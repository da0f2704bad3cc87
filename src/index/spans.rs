//! Spans of the resource tree: a pre-order number and the end of its subtree's range for
//! each resource, so `decide` can tell that none of a user's instance roles is on a
//! resource above `x` without walking up from `x` (one independent load per role instead of
//! one dependent load per level).
//!
//! The tree is the raw one: every single-`parents` link, whatever the orgs and whether the
//! ends are instances. `ResAnc(x)` (model.md §2) is a subset of `x` and the resources up its
//! chain of links, so a span test that rules a resource out is exact, and one that does not
//! is only a "maybe" that the walk then settles.
//!
//! A span is *precise* when `pre != NONE`. The invariant, for every version:
//!
//! > if `x` is precise, its chain of single-parent links ends at a resource with no parent,
//! > and every `r` on that chain (`x` itself included) has `r.pre ≤ x.pre < r.end`.
//!
//! A resource whose chain meets a multi-parent resource or a cycle is not precise, and a
//! resource that is not precise is never an ancestor of a precise one. A full build numbers
//! the forest in pre-order with a stride of 2, so `pre + 1` of a resource belongs to it
//! alone; deltas then keep the invariant cheaply:
//! - a link removed (parents emptied, the instance deleted) only shortens chains: nothing
//!   changes;
//! - a resource no precise resource hangs below (`kids` false) that moves under a precise
//!   parent `p` takes the number `p.pre | 1` and the range of that number alone: inside `p`'s
//!   range and its ancestors' and no one else's (its siblings placed the same way share it,
//!   which only makes them "maybe" ancestors of each other); under anything else it is not
//!   precise;
//! - a resource with no parent and no precise resource below it takes fresh numbers;
//! - a resource with precise resources below it that gains or changes a parent would leave
//!   them wrong: the batch renumbers the whole forest once at its end (`Index::apply`).

use super::{Index, NONE, ResHot};

impl ResHot {
    /// Whether the resource may be `x` or above it, for a resource `x` with span number
    /// `x_pre` (`NONE`: `x` is not precise, and anything may be).
    #[inline]
    pub(crate) fn may_cover(&self, x_pre: u32) -> bool {
        x_pre == NONE || (self.pre <= x_pre && x_pre < self.end)
    }
}

impl Index {
    /// Keeps `hot`'s span right for a new link from resource `id` (`old` is its entry before
    /// the change), or leaves the forest to be renumbered at the end of the batch.
    pub(super) fn place_moved(&mut self, id: u32, old: &ResHot, hot: &mut ResHot) {
        if self.renumber {
            return;
        }
        match hot.parent {
            // A fresh resource with no parent (or one whose links went away): a new root.
            NONE if old.pre == NONE && !old.kids => {
                if let Some(pre) = self.take_numbers() {
                    hot.pre = pre;
                    hot.end = pre + 2;
                }
            }
            // Its chain only got shorter.
            NONE => {}
            _ if old.kids => self.renumber = true,
            ResHot::MANY => {
                hot.pre = NONE;
                hot.end = 0;
            }
            p => {
                let parent = self.res_hot.get(p as usize).copied().unwrap_or_default();
                if p != id && parent.pre != NONE {
                    hot.pre = parent.pre | 1;
                    hot.end = hot.pre + 1;
                    if !parent.kids {
                        self.res_hot.slot(p as usize).kids = true;
                    }
                } else {
                    hot.pre = NONE;
                    hot.end = 0;
                }
            }
        }
    }

    /// Two unused numbers for a new root, or `None` when the number space is spent (the
    /// resource is then not precise, which is always safe).
    fn take_numbers(&mut self) -> Option<u32> {
        let pre = self.next_span;
        let next = pre.checked_add(2).filter(|&n| n < NONE)?;
        self.next_span = next;
        Some(pre)
    }

    /// Numbers the whole forest of single-parent links afresh: pre-order from each resource
    /// with no parent, children in id order, a stride of 2. Resources below a multi-parent
    /// one or on a cycle are left not precise. Writes only the entries that change, so a
    /// batch shares the pages whose spans stay the same.
    pub(super) fn number_forest(&mut self) {
        let n = self.res_hot.len();
        // Children of each resource as one array sorted by parent (counting sort).
        let mut first = vec![0u32; n + 1];
        for hot in self.res_hot.iter() {
            let p = hot.parent;
            if (p as usize) < n {
                first[p as usize + 1] += 1;
            }
        }
        for i in 0..n {
            first[i + 1] += first[i];
        }
        let mut fill = first.clone();
        let mut children = vec![0u32; first[n] as usize];
        for (id, hot) in self.res_hot.iter().enumerate() {
            let p = hot.parent as usize;
            if p < n {
                children[fill[p] as usize] = id as u32;
                fill[p] += 1;
            }
        }
        drop(fill);
        let mut spans = vec![(NONE, 0u32, false); n];
        let mut next: u64 = 0;
        let mut stack: Vec<(u32, u32)> = Vec::new();
        for root in 0..n {
            if self.res_hot.get(root).is_none_or(|h| h.parent != NONE) {
                continue;
            }
            if next + 2 >= u64::from(NONE) {
                break;
            }
            spans[root].0 = next as u32;
            next += 2;
            stack.push((root as u32, first[root]));
            while let Some(&mut (node, ref mut at)) = stack.last_mut() {
                let end = first[node as usize + 1];
                if *at < end && next + 2 < u64::from(NONE) {
                    let child = children[*at as usize];
                    *at += 1;
                    spans[node as usize].2 = true;
                    spans[child as usize].0 = next as u32;
                    next += 2;
                    stack.push((child, first[child as usize]));
                } else {
                    spans[node as usize].1 = next as u32;
                    stack.pop();
                }
            }
        }
        // What a renumbering cut short for want of numbers stays not precise.
        for (id, &(pre, end, kids)) in spans.iter().enumerate() {
            let (pre, end) = if end > pre { (pre, end) } else { (NONE, 0) };
            let Some(hot) = self.res_hot.get(id) else { continue };
            if (hot.pre, hot.end, hot.kids) != (pre, end, kids) {
                let hot = self.res_hot.slot(id);
                hot.pre = pre;
                hot.end = end;
                hot.kids = kids;
            }
        }
        self.next_span = next as u32;
        self.renumber = false;
    }

    /// Checks the invariant of this module over every resource (for tests): the first
    /// resource that breaks it, with what is wrong.
    #[doc(hidden)]
    pub fn span_violation(&self) -> Option<String> {
        let n = self.res_hot.len();
        for (x, hot) in self.res_hot.iter().enumerate() {
            if hot.pre == NONE {
                continue;
            }
            let mut at = x as u32;
            for _ in 0..=n {
                let Some(r) = self.res_hot.get(at as usize) else {
                    return Some(format!("resource {x}: its chain reaches {at}, which has no entry"));
                };
                if !(r.pre <= hot.pre && hot.pre < r.end) {
                    return Some(format!(
                        "resource {x} (pre {}): {at} on its chain has [{}, {})",
                        hot.pre, r.pre, r.end
                    ));
                }
                match r.parent {
                    NONE => break,
                    ResHot::MANY => return Some(format!("resource {x}: its chain meets {at}, with several parents")),
                    p => at = p,
                }
            }
            if self.res_hot.get(at as usize).is_some_and(|r| r.parent != NONE) {
                return Some(format!("resource {x}: its chain does not end"));
            }
        }
        None
    }
}
