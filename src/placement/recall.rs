//! The engine's last few best-node answers, kept until the nodes they
//! looked at change, with the runners-up that let an answer survive a
//! change.
//!
//! The scheduler asks the same question twice in a row: the packing band
//! asks each candidate region for its best node (`Engine::best`), then the
//! engine places the job in the region that fitted best, which asks it
//! again. And after a placement in one region, the next job asks every
//! band region again, though only one node changed. A node's score follows
//! from its own state and the typical shapes alone (what the per-node score
//! caches already rely on), so an answer over a node list stays exact while
//! none of the list's nodes changed and the shapes did not.
//!
//! Each answer keeps the list's best [`KEEP`] nodes (score, tie-break rank,
//! devices) and a bar every other node of the list ranked below when last
//! looked at. When nodes of the list change (the last [`LOG`] changed nodes
//! are remembered; an answer older than that is dropped), only those are
//! looked at again and put among the kept ones; the best kept node is the
//! answer while it still ranks above the bar, else the list is scanned
//! again. A placement that fills the best node thus costs one look, not a
//! scan of the region, until the kept runners-up run out.

use super::engine::{ClassKey, Score};

/// Answers kept (the packing band's regions and the one placed in).
const SLOTS: usize = 4;
/// Node changes remembered; an answer older than this many is dropped.
pub(super) const LOG: u64 = 8;
/// Nodes kept per answer.
pub(super) const KEEP: usize = 8;

/// The best node for a request class over a node list: its score, node
/// and devices; `None`: no node of the list fits.
pub(super) type Best = Option<(Score, u32, u64)>;

/// A node that fits, as an answer ranks it: higher score first, then the
/// lower tie-break rank.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Fit {
    pub(super) score: Score,
    pub(super) rank: u32,
    pub(super) node: u32,
    pub(super) devices: u64,
}

impl Fit {
    /// Whether `self` ranks above `other`.
    pub(super) fn above(&self, other: &Fit) -> bool {
        self.score > other.score || (self.score == other.score && self.rank < other.rank)
    }
}

/// The best few fitting nodes of one scan, best first, and the best of
/// the rest (the bar).
#[derive(Clone, Debug, Default)]
pub(super) struct Top {
    kept: Vec<Fit>,
    bar: Option<Fit>,
}

impl Top {
    pub(super) fn with_capacity() -> Top {
        Top {
            kept: Vec::with_capacity(KEEP + 1),
            bar: None,
        }
    }

    /// Takes a fitting node into the best [`KEEP`], the one pushed out
    /// raising the bar.
    pub(super) fn offer(&mut self, fit: Fit) {
        if self.kept.len() == KEEP && !fit.above(&self.kept[KEEP - 1]) {
            self.raise(fit);
            return;
        }
        let at = self.kept.partition_point(|k| k.above(&fit));
        self.kept.insert(at, fit);
        if self.kept.len() > KEEP {
            let out = self.kept.pop().expect("over KEEP");
            self.raise(out);
        }
    }

    fn raise(&mut self, fit: Fit) {
        if self.bar.is_none_or(|b| fit.above(&b)) {
            self.bar = Some(fit);
        }
    }

    /// Forgets what was kept of a node (it changed).
    fn drop_node(&mut self, node: u32) {
        self.kept.retain(|k| k.node != node);
    }

    /// The best node, when it is known to be: it ranks above the bar
    /// (`Some(None)`: nothing fits, and nothing was left out).
    pub(super) fn best(&self) -> Option<Best> {
        match (self.kept.first(), self.bar) {
            (Some(b), Some(bar)) if !b.above(&bar) => None,
            (None, Some(_)) => None,
            (b, _) => Some(b.map(|b| (b.score, b.node, b.devices))),
        }
    }
}

struct Answer {
    key: ClassKey,
    generation: u32,
    /// The nodes asked about; `None`: every node.
    nodes: Option<Vec<u32>>,
    /// Node changes counted when it was last brought up to date.
    stamp: u64,
    top: Top,
}

impl Answer {
    fn covers(&self, node: u32) -> bool {
        self.nodes
            .as_deref()
            .is_none_or(|list| list.contains(&node))
    }
}

/// What is kept of a question ([`Recall::recall`]).
pub(super) enum Lookup {
    /// Nothing usable: scan.
    Miss,
    /// The answer, exact.
    Hit(Best),
    /// Some of the list's nodes changed: look at these again and hand them
    /// to [`Recall::refresh`] with the answer's slot.
    Changed { slot: usize, nodes: Changed },
}

/// The changed nodes of an answer's list (at most [`LOG`], no repeats).
#[derive(Default)]
pub(super) struct Changed {
    nodes: [u32; LOG as usize],
    len: usize,
}

impl Changed {
    fn push(&mut self, node: u32) {
        if !self.nodes[..self.len].contains(&node) {
            self.nodes[self.len] = node;
            self.len += 1;
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.nodes[..self.len].iter().copied()
    }
}

/// See the module documentation.
#[derive(Default)]
pub(super) struct Recall {
    answers: Vec<Answer>,
    next: usize,
    changes: u64,
    changed: [u32; LOG as usize],
}

impl Recall {
    /// A node's state changed (allocation, release, health).
    pub(super) fn changed(&mut self, node: u32) {
        self.changed[(self.changes % LOG) as usize] = node;
        self.changes += 1;
    }

    /// Every answer is stale (the tie-break order changed).
    pub(super) fn forget(&mut self) {
        self.answers.clear();
    }

    /// What is kept of this question.
    pub(super) fn recall(&self, key: ClassKey, generation: u32, nodes: Option<&[u32]>) -> Lookup {
        let found = self.answers.iter().position(|a| {
            a.key == key && a.generation == generation && a.nodes.as_deref() == nodes
        });
        let Some(slot) = found else {
            return Lookup::Miss;
        };
        let a = &self.answers[slot];
        let since = self.changes - a.stamp;
        if since > LOG {
            return Lookup::Miss;
        }
        let mut changed = Changed::default();
        for c in a.stamp..self.changes {
            let node = self.changed[(c % LOG) as usize];
            if a.covers(node) {
                changed.push(node);
            }
        }
        if changed.len == 0 {
            return a.top.best().map_or(Lookup::Miss, Lookup::Hit);
        }
        Lookup::Changed {
            slot,
            nodes: changed,
        }
    }

    /// Brings the answer in `slot` up to date with its changed nodes looked
    /// at again (`fits`: those that fit now, with their new standing); the
    /// best node when it is still known, `None`: scan.
    pub(super) fn refresh(
        &mut self,
        slot: usize,
        changed: &Changed,
        fits: impl IntoIterator<Item = Fit>,
    ) -> Option<Best> {
        let a = &mut self.answers[slot];
        for node in changed.iter() {
            a.top.drop_node(node);
        }
        for fit in fits {
            a.top.offer(fit);
        }
        a.stamp = self.changes;
        a.top.best()
    }

    /// Keeps an answer just worked out by a scan (replacing this
    /// question's old one, else the oldest kept).
    pub(super) fn keep(&mut self, key: ClassKey, generation: u32, nodes: Option<&[u32]>, top: Top) {
        let slot = self
            .answers
            .iter()
            .position(|a| a.key == key && a.nodes.as_deref() == nodes);
        let slot = match slot {
            Some(i) => i,
            None if self.answers.len() < SLOTS => {
                self.answers.push(Answer {
                    key,
                    generation,
                    nodes: None,
                    stamp: 0,
                    top: Top::default(),
                });
                self.answers.len() - 1
            }
            None => {
                let oldest = self.next;
                self.next = (oldest + 1) % SLOTS;
                oldest
            }
        };
        let a = &mut self.answers[slot];
        a.key = key;
        a.generation = generation;
        a.stamp = self.changes;
        a.top = top;
        match (nodes, &mut a.nodes) {
            (Some(list), Some(kept)) => {
                if kept.as_slice() != list {
                    kept.clear();
                    kept.extend_from_slice(list);
                }
            }
            (list, kept) => *kept = list.map(<[u32]>::to_vec),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::GpuDemand;

    fn key(gpus: u8) -> ClassKey {
        ClassKey {
            cpu_milli: 1000,
            memory_mib: 1024,
            gpu: GpuDemand::Whole { count: gpus },
            models: u64::MAX,
        }
    }

    fn fit(node: u32, score: i64) -> Fit {
        Fit {
            score: (score, 0),
            rank: node,
            node,
            devices: 1,
        }
    }

    /// A scan's top over `(node, score)` pairs.
    fn top(fits: &[(u32, i64)]) -> Top {
        let mut t = Top::with_capacity();
        for &(n, s) in fits {
            t.offer(fit(n, s));
        }
        t
    }

    fn hit(l: Lookup) -> Option<Best> {
        match l {
            Lookup::Hit(b) => Some(b),
            _ => None,
        }
    }

    fn changed(l: Lookup) -> Option<(usize, Vec<u32>)> {
        match l {
            Lookup::Changed { slot, nodes } => Some((slot, nodes.iter().collect())),
            _ => None,
        }
    }

    const ANSWER: Best = Some(((5, 0), 3, 1));

    #[test]
    fn an_answer_holds_until_a_node_of_its_list_changes() {
        let mut r = Recall::default();
        let east = [1, 3, 5];
        r.keep(key(1), 0, Some(&east), top(&[(3, 5), (1, 2)]));
        assert_eq!(hit(r.recall(key(1), 0, Some(&east))), Some(ANSWER));
        // Another question, another list, other shapes: not this answer.
        assert!(matches!(r.recall(key(2), 0, Some(&east)), Lookup::Miss));
        assert!(matches!(r.recall(key(1), 0, Some(&[1, 3])), Lookup::Miss));
        assert!(matches!(r.recall(key(1), 1, Some(&east)), Lookup::Miss));
        // A node outside the list changed: it still holds.
        r.changed(2);
        assert_eq!(hit(r.recall(key(1), 0, Some(&east))), Some(ANSWER));
        // Nodes of its list changed (one twice): those are looked at again.
        r.changed(5);
        r.changed(1);
        r.changed(5);
        assert_eq!(
            changed(r.recall(key(1), 0, Some(&east))),
            Some((0, vec![5, 1]))
        );
    }

    /// The best node filled: the runner-up is the answer without a scan,
    /// until the kept nodes no longer rank above the ones left out.
    #[test]
    fn a_changed_best_node_leaves_the_runner_up() {
        let mut r = Recall::default();
        let list: Vec<u32> = (0..20).collect();
        // Scores 100 - node: node 0 best; nodes 0..KEEP kept.
        let scan: Vec<(u32, i64)> = list.iter().map(|&n| (n, 100 - n as i64)).collect();
        r.keep(key(1), 0, Some(&list), top(&scan));
        for filled in 0..KEEP as u32 {
            r.changed(filled);
            let (slot, nodes) = changed(r.recall(key(1), 0, Some(&list))).unwrap();
            assert_eq!(nodes, [filled]);
            let mut one = Changed::default();
            one.push(filled);
            // The filled node no longer fits.
            let best = r.refresh(slot, &one, []);
            if filled + 1 < KEEP as u32 {
                let next = filled + 1;
                assert_eq!(best, Some(Some(((100 - next as i64, 0), next, 1))));
            } else {
                // Every kept node is gone: node KEEP (the bar) is unknown.
                assert_eq!(best, None);
            }
        }
        // Every kept node changed and now ranks below the bar (node KEEP,
        // left out unchanged): the answer is unknown.
        let mut r = Recall::default();
        r.keep(key(1), 0, Some(&list), top(&scan));
        for n in 0..KEEP as u32 {
            r.changed(n);
        }
        let (slot, nodes) = changed(r.recall(key(1), 0, Some(&list))).unwrap();
        let mut all = Changed::default();
        nodes.iter().for_each(|&n| all.push(n));
        let worse = nodes.iter().map(|&n| fit(n, 1));
        assert_eq!(r.refresh(slot, &all, worse), None);
        // A changed node that now ranks above the rest is the answer.
        let mut r = Recall::default();
        r.keep(key(1), 0, Some(&list), top(&scan));
        r.changed(19);
        let (slot, nodes) = changed(r.recall(key(1), 0, Some(&list))).unwrap();
        let mut one = Changed::default();
        one.push(nodes[0]);
        assert_eq!(
            r.refresh(slot, &one, [fit(19, 200)]),
            Some(Some(((200, 0), 19, 1)))
        );
        assert_eq!(
            hit(r.recall(key(1), 0, Some(&list))),
            Some(Some(((200, 0), 19, 1)))
        );
    }

    #[test]
    fn an_answer_older_than_the_log_is_dropped() {
        let mut r = Recall::default();
        r.keep(key(1), 0, None, top(&[(3, 5)]));
        assert_eq!(hit(r.recall(key(1), 0, None)), Some(ANSWER));
        // Over every node: any change is one of its nodes.
        r.changed(9);
        assert_eq!(changed(r.recall(key(1), 0, None)), Some((0, vec![9])));
        r.keep(key(1), 0, Some(&[1]), top(&[(1, 5)]));
        for _ in 0..LOG + 1 {
            r.changed(2);
        }
        assert!(matches!(r.recall(key(1), 0, Some(&[1])), Lookup::Miss));
        r.keep(key(1), 0, Some(&[1]), top(&[]));
        assert_eq!(hit(r.recall(key(1), 0, Some(&[1]))), Some(None));
        r.forget();
        assert!(matches!(r.recall(key(1), 0, Some(&[1])), Lookup::Miss));
    }

    #[test]
    fn it_keeps_the_last_few_questions() {
        let mut r = Recall::default();
        for n in 0..SLOTS as u32 + 1 {
            r.keep(key(1), 0, Some(&[n]), top(&[(n, 1)]));
        }
        let kept = (0..SLOTS as u32 + 1)
            .filter(|&n| hit(r.recall(key(1), 0, Some(&[n]))).is_some())
            .count();
        assert_eq!(kept, SLOTS);
        assert!(hit(r.recall(key(1), 0, Some(&[SLOTS as u32]))).is_some());
    }
}
