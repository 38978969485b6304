//! [`Text`]: the string type of status words and sentences.
//!
//! A pass can leave 20,000 arriving jobs pending with the same refusal, and
//! every status carries a phase, a reason and conditions. The fixed words
//! (phases, condition types, reasons, "spec is valid") are borrowed from
//! the program; a sentence made at run time is shared, so the jobs told the
//! same thing hold one copy of it, and cloning a status copies no text.
//! On the wire it is a plain JSON string.

use std::borrow::Cow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A status word or sentence (see the module documentation).
#[derive(Clone)]
pub enum Text {
    Fixed(&'static str),
    Shared(Arc<str>),
}

impl Text {
    pub fn as_str(&self) -> &str {
        match self {
            Text::Fixed(s) => s,
            Text::Shared(s) => s,
        }
    }
}

impl Default for Text {
    fn default() -> Self {
        Text::Fixed("")
    }
}

impl Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl From<&'static str> for Text {
    fn from(s: &'static str) -> Self {
        Text::Fixed(s)
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        Text::Shared(s.into())
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Self) -> bool {
        // One copy (a sentence told to many jobs) is equal without reading it.
        let (a, b) = (self.as_str(), other.as_str());
        std::ptr::eq(a, b) || a == b
    }
}

impl Eq for Text {}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Text {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The words the program writes into statuses (phases, condition types
/// and statuses, reasons, the fixed sentences), sorted. Read back from the
/// API server they are borrowed from here, not allocated one per status:
/// the scheduler compares 20,000 waiting jobs' status words every pass,
/// and a word in the program is in cache where 20,000 copies on the heap
/// are not. A word missing here is still read correctly (as a copy).
static WORDS: [&str; 28] = [
    "Admitted",
    "Completed",
    "Failed",
    "False",
    "GangBroken",
    "InvalidQuota",
    "InvalidSpec",
    "MaxRuntimeExceeded",
    "MonthlyGpuHoursExceeded",
    "MonthlyTokensExceeded",
    "NoQuota",
    "NodeLost",
    "Pending",
    "PodFailed",
    "Preempted",
    "Preempting",
    "QuotaExceeded",
    "QuotaInvalid",
    "Running",
    "Scheduled",
    "Succeeded",
    "TenantMismatch",
    "TimeShifted",
    "True",
    "Unschedulable",
    "Valid",
    "quota is valid",
    "spec is valid",
];

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match WORDS.binary_search(&s.as_str()) {
            Ok(i) => Text::Fixed(WORDS[i]),
            Err(_) => Text::from(s),
        })
    }
}

impl JsonSchema for Text {
    fn schema_name() -> Cow<'static, str> {
        String::schema_name()
    }
    fn schema_id() -> Cow<'static, str> {
        String::schema_id()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        String::json_schema(generator)
    }
    fn inline_schema() -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_sentence_is_one_copy_and_reads_as_a_string() {
        let said = Text::from(format!("the gang of {} fits in no allowed region", 2));
        let told = said.clone();
        match (&said, &told) {
            (Text::Shared(a), Text::Shared(b)) => assert!(Arc::ptr_eq(a, b)),
            _ => panic!("a sentence made at run time is shared"),
        }
        assert_eq!(told, "the gang of 2 fits in no allowed region");
        assert_eq!(Text::from("Pending"), Text::from("Pending".to_string()));
        let json = serde_json::to_string(&told).unwrap();
        assert_eq!(json, "\"the gang of 2 fits in no allowed region\"");
        let back: Text = serde_json::from_str(&json).unwrap();
        assert_eq!(back, told);
    }

    /// Status words read back are the program's own (no copy per status);
    /// any other text is read as it was written.
    #[test]
    fn status_words_read_back_are_borrowed_from_the_program() {
        assert!(WORDS.is_sorted(), "WORDS is binary-searched");
        for word in WORDS.iter().copied() {
            let back: Text = serde_json::from_str(&format!("{word:?}")).unwrap();
            assert!(matches!(back, Text::Fixed(w) if std::ptr::eq(w, word)));
        }
        let other: Text = serde_json::from_str("\"Runnin\"").unwrap();
        assert!(matches!(&other, Text::Shared(_)));
        assert_eq!(other, "Runnin");
        assert_ne!(other, Text::from("Running"));
    }
}
