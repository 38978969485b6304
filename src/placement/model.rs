//! Accelerator model names interned as small ids, and sets of them as bitmasks.

use std::collections::HashMap;

/// Index of an accelerator model in a [`ModelTable`] (at most 64 models).
pub type ModelId = u8;

/// Most models one table can hold (a [`ModelSet`] is a `u64` bitmask).
pub const MAX_MODELS: usize = 64;

/// Set of allowed accelerator models; [`ModelSet::ANY`] accepts every model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ModelSet(pub u64);

impl ModelSet {
    /// Every model allowed (the request named none).
    pub const ANY: ModelSet = ModelSet(u64::MAX);
    /// No model allowed.
    pub const NONE: ModelSet = ModelSet(0);

    /// The set holding exactly `id`.
    pub fn only(id: ModelId) -> Self {
        ModelSet(1u64 << id)
    }

    /// Adds `id` to the set.
    pub fn with(self, id: ModelId) -> Self {
        ModelSet(self.0 | (1u64 << id))
    }

    /// Whether `id` is in the set.
    #[inline]
    pub fn contains(self, id: ModelId) -> bool {
        self.0 & (1u64 << id) != 0
    }
}

impl Default for ModelSet {
    fn default() -> Self {
        ModelSet::ANY
    }
}

/// Model name ↔ [`ModelId`]. Names are matched exactly (`"V100M16"` ≠ `"v100m16"`).
#[derive(Clone, Debug, Default)]
pub struct ModelTable {
    names: Vec<String>,
    ids: HashMap<String, ModelId>,
}

impl ModelTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// The id of `name`, adding it if new. Errors when the table is full.
    pub fn intern(&mut self, name: &str) -> Result<ModelId, String> {
        if let Some(&id) = self.ids.get(name) {
            return Ok(id);
        }
        if self.names.len() >= MAX_MODELS {
            return Err(format!(
                "too many accelerator models (at most {MAX_MODELS}); cannot add {name:?}"
            ));
        }
        let id = self.names.len() as ModelId;
        self.names.push(name.to_string());
        self.ids.insert(name.to_string(), id);
        Ok(id)
    }

    /// The id of a known model.
    pub fn id(&self, name: &str) -> Option<ModelId> {
        self.ids.get(name).copied()
    }

    /// The name of a model id.
    pub fn name(&self, id: ModelId) -> &str {
        &self.names[id as usize]
    }

    /// Number of models known.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The set of the named models this table knows (unknown names are
    /// left out).
    pub fn set_of<'n>(&self, names: impl IntoIterator<Item = &'n str>) -> ModelSet {
        names
            .into_iter()
            .filter_map(|n| self.id(n))
            .fold(ModelSet::NONE, ModelSet::with)
    }

    /// Parses an allowed-model list such as `"V100M16|V100M32"` (empty = any).
    /// Unknown names are an error naming the model and the known ones.
    pub fn parse_set(&self, spec: &str) -> Result<ModelSet, String> {
        let spec = spec.trim();
        if spec.is_empty() {
            return Ok(ModelSet::ANY);
        }
        let mut set = ModelSet::NONE;
        for name in spec.split('|').map(str::trim).filter(|s| !s.is_empty()) {
            match self.id(name) {
                Some(id) => set = set.with(id),
                None => {
                    return Err(format!(
                        "unknown accelerator model {name:?}; known models: {}",
                        self.names.join(", ")
                    ))
                }
            }
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_and_names() {
        let mut t = ModelTable::new();
        let a = t.intern("A10").unwrap();
        let b = t.intern("T4").unwrap();
        assert_eq!(t.intern("A10").unwrap(), a);
        let s = t.parse_set("T4").unwrap();
        assert!(s.contains(b) && !s.contains(a));
        assert!(t.parse_set("").unwrap().contains(a));
        assert_eq!(t.set_of(["T4", "H100"]), ModelSet::only(b));
        let err = t.parse_set("H100").unwrap_err();
        assert!(err.contains("H100") && err.contains("A10"), "{err}");
    }
}
