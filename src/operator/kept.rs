//! Views of objects kept between passes ([`Kept`]): a pass converts only
//! what changed since the last one.
//!
//! A reflector's store hands out the same `Arc` for an object until a watch
//! event replaces it, in much the same order pass after pass. So an object
//! is first looked for by identity: at its position in the last pass, else
//! by its address among the last pass's objects (a number, hashed in a
//! nanosecond). Only what that misses — changed or new objects, or ones
//! listed afresh — is looked up by uid (else name), over the last pass's
//! objects nothing else claimed, and reused when its resourceVersion is the
//! same: a pass looks up by string only the objects that changed, not all
//! 37k workloads. (The last pass's objects are held, so no address is
//! reused while it is remembered.)

use std::collections::HashMap;
use std::sync::Arc;

use kube::Resource;

use crate::placement::FxBuild;

/// One object of the last pass, with its view (`None` while lent to the
/// snapshot, or when it was not handed back).
struct Slot<K, V> {
    object: Arc<K>,
    view: Option<V>,
}

/// Views kept between passes. The big kinds' views are lent to the
/// snapshot (moved, not copied) and handed back after the pass
/// ([`Kept::give_back`]); a view not handed back is made again.
///
/// The big buffers (37k slots and views of ~700 bytes each) are reused
/// pass after pass, not allocated afresh: the allocator hands memory of
/// that size back to the kernel when it is freed, and touching it again
/// costs a page fault every 4 KiB (a quarter of the snapshot step's time
/// at 5,000 nodes and 37k workloads).
pub(super) struct Kept<K, V> {
    /// The last pass's objects in its order.
    last: Vec<Slot<K, V>>,
    /// The pass before's slot buffer, emptied, for the next pass.
    spare: Vec<Slot<K, V>>,
    /// The buffer of the views lent last, emptied when they came back.
    lent: Vec<V>,
}

impl<K, V> Default for Kept<K, V> {
    fn default() -> Self {
        Kept {
            last: Vec::new(),
            spare: Vec::new(),
            lent: Vec::new(),
        }
    }
}

/// An object's key among its kind: its uid, else its name.
fn key_of<K: Resource>(o: &K) -> &str {
    let meta = o.meta();
    meta.uid.as_deref().or(meta.name.as_deref()).unwrap_or("")
}

fn version_of<K: Resource>(o: &K) -> &str {
    o.meta().resource_version.as_deref().unwrap_or("")
}

fn address<K>(o: &Arc<K>) -> usize {
    Arc::as_ptr(o) as *const () as usize
}

impl<K: Resource, V: Clone> Kept<K, V> {
    /// Views of `objects` (in their order): kept ones copied, the others
    /// made and kept.
    pub(super) fn copies(&mut self, objects: &[Arc<K>], make: impl FnMut(&K) -> V) -> Vec<V> {
        let out = Vec::with_capacity(objects.len());
        self.views(objects, make, out, |v| v.as_ref().expect("kept").clone())
    }

    /// Views of `objects` (in their order): kept ones lent (moved out until
    /// [`Kept::give_back`]), the others made.
    pub(super) fn lend(&mut self, objects: &[Arc<K>], make: impl FnMut(&K) -> V) -> Vec<V> {
        let mut out = std::mem::take(&mut self.lent);
        out.clear();
        out.reserve(objects.len());
        self.views(objects, make, out, |v| v.take().expect("checked"))
    }

    fn views(
        &mut self,
        objects: &[Arc<K>],
        mut make: impl FnMut(&K) -> V,
        mut out: Vec<V>,
        out_of: impl Fn(&mut Option<V>) -> V,
    ) -> Vec<V> {
        let mut last = std::mem::replace(&mut self.last, std::mem::take(&mut self.spare));
        let found = Self::find(objects, &last);
        self.last.clear();
        self.last.reserve(objects.len());
        for (object, at) in objects.iter().zip(found) {
            let mut view = at.and_then(|k| last[k].view.take());
            if view.is_none() {
                view = Some(make(object));
            }
            out.push(out_of(&mut view));
            self.last.push(Slot {
                object: Arc::clone(object),
                view,
            });
        }
        last.clear();
        self.spare = last;
        out
    }

    /// Where each object's kept view is among `last` (`None`: none is).
    fn find(objects: &[Arc<K>], last: &[Slot<K, V>]) -> Vec<Option<usize>> {
        let mut claimed = vec![false; last.len()];
        let mut found = vec![None; objects.len()];
        let mut by_address: Option<HashMap<usize, usize, FxBuild>> = None;
        let usable = |k: usize, claimed: &[bool]| !claimed[k] && last[k].view.is_some();
        // The same object: at its place, else anywhere.
        for (i, object) in objects.iter().enumerate() {
            let k = match last.get(i) {
                Some(s) if Arc::ptr_eq(&s.object, object) => Some(i),
                _ => by_address
                    .get_or_insert_with(|| {
                        let at = last.iter().enumerate();
                        at.map(|(k, s)| (address(&s.object), k)).collect()
                    })
                    .get(&address(object))
                    .copied(),
            };
            if let Some(k) = k.filter(|&k| usable(k, &claimed)) {
                claimed[k] = true;
                found[i] = Some(k);
            }
        }
        // An object listed afresh: by key, at the same resourceVersion.
        if found.iter().all(Option::is_some) {
            return found;
        }
        let by_key: HashMap<&str, usize, FxBuild> = (0..last.len())
            .filter(|&k| usable(k, &claimed))
            .map(|k| (key_of(&*last[k].object), k))
            .collect();
        for (i, object) in objects.iter().enumerate() {
            if found[i].is_some() {
                continue;
            }
            let rv = version_of(&**object);
            let k = by_key.get(key_of(&**object)).copied();
            let same = |k: &usize| !rv.is_empty() && version_of(&*last[*k].object) == rv;
            if let Some(k) = k.filter(|k| usable(*k, &claimed) && same(k)) {
                claimed[k] = true;
                found[i] = Some(k);
            }
        }
        found
    }

    /// Takes back the views lent by the last pass (in the order lent),
    /// except those at `changed` (they no longer say what their object says).
    pub(super) fn give_back(&mut self, mut views: Vec<V>, changed: &[usize]) {
        let mut changed = changed.to_vec();
        changed.sort_unstable();
        let is_changed = |i: usize| changed.binary_search(&i).is_ok();
        for (i, (slot, view)) in self.last.iter_mut().zip(views.drain(..)).enumerate() {
            if slot.view.is_none() && !is_changed(i) {
                slot.view = Some(view);
            }
        }
        self.lent = views;
    }

    /// Objects remembered from the last pass.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.last.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Node;
    use serde_json::json;

    fn node(name: &str, uid: &str, rv: &str, gpus: u32) -> Arc<Node> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "uid": uid, "resourceVersion": rv,
                             "labels": {"zhisuan.io/gpu-count": gpus.to_string()}}
            }))
            .unwrap(),
        )
    }

    /// Counts the views made.
    fn counting(made: &std::cell::Cell<u32>) -> impl Fn(&Node) -> (String, String) + '_ {
        move |n: &Node| {
            made.set(made.get() + 1);
            (key_of(n).to_string(), version_of(n).to_string())
        }
    }

    /// Lent views come back and are moved out again, unconverted and
    /// uncopied; one the pass changed (`changed`), or one never handed
    /// back, is made again from its object; a changed resourceVersion
    /// makes it again; a gone object is forgotten.
    #[test]
    fn lent_views_are_reused_once_handed_back_and_made_again_otherwise() {
        let made = std::cell::Cell::new(0);
        let make = counting(&made);
        let mut kept: Kept<Node, (String, String)> = Kept::default();
        let objects = vec![node("a", "ua", "1", 8), node("b", "ub", "1", 8)];
        let views = kept.lend(&objects, &make);
        assert_eq!(made.get(), 2);
        kept.give_back(views, &[1]);
        let views = kept.lend(&objects, &make);
        assert_eq!(
            made.get(),
            3,
            "a reused; b (changed by the pass) made again"
        );
        assert_eq!(views[0].0, "ua");
        // Not handed back: both made again.
        let _ = kept.lend(&objects, &make);
        assert_eq!(made.get(), 5);
        let views = kept.lend(&objects, &make);
        kept.give_back(views, &[]);
        let changed = vec![node("a", "ua", "2", 4)];
        let views = kept.lend(&changed, &make);
        assert_eq!(views[0].1, "2", "a new resourceVersion is converted");
        assert_eq!(made.get(), 8);
        assert_eq!(kept.len(), 1, "b is gone");
    }

    /// The buffers are the same pass after pass: the views lent come in
    /// the buffer handed back last, and the slots alternate between two.
    #[test]
    fn passes_reuse_the_buffers_of_the_passes_before() {
        let made = std::cell::Cell::new(0);
        let make = counting(&made);
        let mut kept: Kept<Node, (String, String)> = Kept::default();
        let objects: Vec<Arc<Node>> = (0..64)
            .map(|i| node(&format!("n{i}"), &format!("u{i}"), "1", 8))
            .collect();
        let views = kept.lend(&objects, &make);
        let lent = views.as_ptr();
        kept.give_back(views, &[]);
        let slots = (kept.last.as_ptr(), kept.last.capacity());
        // Buffers of the same sizes taken meanwhile: a buffer let go would
        // be one of these.
        let others: Vec<(String, String)> = Vec::with_capacity(64);
        let views = kept.lend(&objects, &make);
        assert_eq!(views.as_ptr(), lent, "views lent in the buffer handed back");
        kept.give_back(views, &[]);
        let other_slots: Vec<Slot<Node, (String, String)>> = Vec::with_capacity(slots.1);
        let _ = kept.lend(&objects, &make);
        assert_eq!(kept.last.as_ptr(), slots.0, "two slot buffers, in turn");
        drop((others, other_slots));
        assert_eq!(made.get(), 64, "every view reused");
    }

    /// An object found by identity at another place (one before it went),
    /// or listed afresh at the same resourceVersion (found by uid), keeps
    /// its view; each view goes to its own object, whatever the order.
    #[test]
    fn a_view_follows_its_object_when_the_order_changes_or_it_is_listed_again() {
        let made = std::cell::Cell::new(0);
        let make = counting(&made);
        let mut kept: Kept<Node, (String, String)> = Kept::default();
        let (a, b, c) = (
            node("a", "ua", "1", 8),
            node("b", "ub", "1", 8),
            node("c", "uc", "1", 8),
        );
        let views = kept.lend(&[a.clone(), b.clone(), c.clone()], &make);
        kept.give_back(views, &[]);
        assert_eq!(made.get(), 3);
        // a gone, c and b swapped: both found where they are now.
        let views = kept.lend(&[c.clone(), b.clone()], &make);
        assert_eq!(made.get(), 3);
        assert_eq!((views[0].0.as_str(), views[1].0.as_str()), ("uc", "ub"));
        kept.give_back(views, &[]);
        // Listed afresh (new objects), b at its old version, c at a new one.
        let fresh = [node("b", "ub", "1", 8), node("c", "uc", "2", 8)];
        let views = kept.lend(&fresh, &make);
        assert_eq!(made.get(), 4, "b kept by uid and version; c made again");
        assert_eq!((views[0].0.as_str(), views[1].1.as_str()), ("ub", "2"));
        kept.give_back(views, &[]);
        // Copies keep the view for the next pass as well.
        let copies = kept.copies(&fresh, &make);
        let again = kept.copies(&fresh, &make);
        assert_eq!(copies, again);
        assert_eq!(made.get(), 4);
    }

    /// Without a resourceVersion an object keeps its view only while it is
    /// the same object (found by identity, wherever it is listed); a new
    /// object of the same uid is made again.
    #[test]
    fn an_object_without_a_version_is_known_by_identity_alone() {
        let made = std::cell::Cell::new(0);
        let make = counting(&made);
        let mut kept: Kept<Node, (String, String)> = Kept::default();
        let (x, y) = (node("x", "ux", "", 8), node("y", "uy", "", 8));
        let views = kept.lend(&[x.clone(), y.clone()], &make);
        kept.give_back(views, &[]);
        let views = kept.lend(&[y.clone(), x.clone()], &make);
        assert_eq!(made.get(), 2, "both found where they are now");
        assert_eq!((views[0].0.as_str(), views[1].0.as_str()), ("uy", "ux"));
        kept.give_back(views, &[]);
        let _ = kept.lend(&[node("y", "uy", "", 8), x], &make);
        assert_eq!(made.get(), 3, "a new y is made again");
    }
}
