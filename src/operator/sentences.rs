//! One copy of each status sentence. A pass can leave 20,000 jobs pending
//! with the same refusal; read back from the API server, each status would
//! hold its own copy of the sentence, and the scheduler, comparing every
//! waiting job's status with what it would write, would read 20,000 copies
//! scattered over the heap each pass. Sentences read back are shared here
//! (the status words are the program's own: [`crate::jobs::Text`]).

use std::collections::HashSet;
use std::sync::Arc;

use crate::jobs::{Text, WorkloadStatus};
use crate::placement::FxBuild;

/// Distinct sentences kept at most (past it, those no view holds any more
/// are let go).
const KEEP: usize = 4096;

#[derive(Default)]
pub(super) struct Sentences {
    known: HashSet<Arc<str>, FxBuild>,
}

impl Sentences {
    /// Makes the status's sentences the shared copies.
    pub fn share(&mut self, status: &mut WorkloadStatus) {
        for c in &mut status.conditions {
            self.share_text(&mut c.message);
        }
    }

    fn share_text(&mut self, text: &mut Text) {
        let Text::Shared(s) = text else { return };
        match self.known.get(s) {
            Some(known) => *s = known.clone(),
            None => {
                if self.known.len() >= KEEP {
                    self.known.retain(|k| Arc::strong_count(k) > 1);
                    if self.known.len() >= KEEP {
                        self.known.clear();
                    }
                }
                self.known.insert(s.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::Condition;

    fn status(message: &str) -> WorkloadStatus {
        WorkloadStatus {
            conditions: vec![Condition {
                type_: "Scheduled".into(),
                status: "False".into(),
                reason: "Unschedulable".into(),
                message: message.to_string().into(),
                last_transition_time: None,
                observed_generation: None,
            }],
            ..Default::default()
        }
    }

    fn message(s: &WorkloadStatus) -> &Arc<str> {
        match &s.conditions[0].message {
            Text::Shared(m) => m,
            Text::Fixed(_) => panic!("a sentence made at run time"),
        }
    }

    /// Two statuses telling the same sentence hold one copy; another
    /// sentence is its own; past the limit the unheld ones are let go.
    #[test]
    fn statuses_telling_the_same_sentence_share_one_copy() {
        let mut sentences = Sentences::default();
        let (mut a, mut b, mut c) = (status("no room"), status("no room"), status("other"));
        assert!(!Arc::ptr_eq(message(&a), message(&b)));
        for s in [&mut a, &mut b, &mut c] {
            sentences.share(s);
        }
        assert!(Arc::ptr_eq(message(&a), message(&b)));
        assert!(!Arc::ptr_eq(message(&a), message(&c)));
        assert_eq!(&**message(&c), "other");
        drop(c);
        for i in 0..KEEP {
            sentences.share(&mut status(&format!("s{i}")));
        }
        assert!(sentences.known.len() <= KEEP);
        let mut d = status("no room");
        sentences.share(&mut d);
        assert!(
            Arc::ptr_eq(message(&a), message(&d)),
            "a held sentence is kept"
        );
    }
}
