//! The engine's last few best-node answers, kept until a node they looked
//! at changes.
//!
//! The scheduler asks the same question twice in a row: the packing band
//! asks each candidate region for its best node (`Engine::best`), then the
//! engine places the job in the region that fitted best, which asks it
//! again. And after a placement in one region, the next job asks every
//! band region again, though only one node changed. A node's score follows
//! from its own state and the typical shapes alone (what the per-node score
//! caches already rely on), so an answer over a node list stays exact while
//! none of the list's nodes changed and the shapes did not. Each answer is
//! kept with the count of node changes when it was worked out; the last
//! [`LOG`] changed nodes are remembered, and an answer older than that, or
//! whose list holds one of them, is worked out again.

use super::engine::{ClassKey, Score};

/// Answers kept (the packing band's regions and the one placed in).
const SLOTS: usize = 4;
/// Node changes remembered; an answer older than this many is dropped.
const LOG: u64 = 8;

/// The best node for a request class over a node list: its score, node
/// and devices; `None`: no node of the list fits.
pub(super) type Best = Option<(Score, u32, u64)>;

struct Answer {
    key: ClassKey,
    generation: u32,
    /// The nodes asked about; `None`: every node.
    nodes: Option<Vec<u32>>,
    /// Node changes counted when it was worked out.
    stamp: u64,
    best: Best,
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

    /// The kept answer to this question, if it still holds.
    pub(super) fn recall(
        &self,
        key: ClassKey,
        generation: u32,
        nodes: Option<&[u32]>,
    ) -> Option<Best> {
        let a = self
            .answers
            .iter()
            .find(|a| a.key == key && a.generation == generation && a.nodes.as_deref() == nodes)?;
        let since = self.changes - a.stamp;
        if since == 0 {
            return Some(a.best);
        }
        let list = a.nodes.as_deref()?;
        if since > LOG {
            return None;
        }
        let touched =
            (a.stamp..self.changes).any(|c| list.contains(&self.changed[(c % LOG) as usize]));
        (!touched).then_some(a.best)
    }

    /// Keeps an answer just worked out (replacing this question's old one,
    /// else the oldest kept).
    pub(super) fn keep(
        &mut self,
        key: ClassKey,
        generation: u32,
        nodes: Option<&[u32]>,
        best: Best,
    ) {
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
                    best: None,
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
        a.best = best;
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

    const ANSWER: Best = Some(((5, 0), 3, 0b1));

    #[test]
    fn an_answer_holds_until_a_node_of_its_list_changes() {
        let mut r = Recall::default();
        let east = [1, 3, 5];
        r.keep(key(1), 0, Some(&east), ANSWER);
        assert_eq!(r.recall(key(1), 0, Some(&east)), Some(ANSWER));
        // Another question, another list, other shapes: not this answer.
        assert_eq!(r.recall(key(2), 0, Some(&east)), None);
        assert_eq!(r.recall(key(1), 0, Some(&[1, 3])), None);
        assert_eq!(r.recall(key(1), 1, Some(&east)), None);
        // A node outside the list changed: it still holds.
        r.changed(2);
        assert_eq!(r.recall(key(1), 0, Some(&east)), Some(ANSWER));
        // One of its nodes changed: worked out again.
        r.changed(5);
        assert_eq!(r.recall(key(1), 0, Some(&east)), None);
    }

    #[test]
    fn an_answer_over_every_node_or_older_than_the_log_is_dropped() {
        let mut r = Recall::default();
        r.keep(key(1), 0, None, ANSWER);
        assert_eq!(r.recall(key(1), 0, None), Some(ANSWER));
        r.changed(9);
        assert_eq!(r.recall(key(1), 0, None), None);
        r.keep(key(1), 0, Some(&[1]), ANSWER);
        for _ in 0..LOG + 1 {
            r.changed(2);
        }
        assert_eq!(r.recall(key(1), 0, Some(&[1])), None);
        r.keep(key(1), 0, Some(&[1]), None);
        assert_eq!(r.recall(key(1), 0, Some(&[1])), Some(None));
        r.forget();
        assert_eq!(r.recall(key(1), 0, Some(&[1])), None);
    }

    #[test]
    fn it_keeps_the_last_few_questions() {
        let mut r = Recall::default();
        for n in 0..SLOTS as u32 + 1 {
            r.keep(key(1), 0, Some(&[n]), ANSWER);
        }
        let kept = (0..SLOTS as u32 + 1)
            .filter(|&n| r.recall(key(1), 0, Some(&[n])).is_some())
            .count();
        assert_eq!(kept, SLOTS);
        assert!(r.recall(key(1), 0, Some(&[SLOTS as u32])).is_some());
    }
}
