//! The accelerator vendor a job needs: one spelling for every entry point.
//!
//! A job names a vendor (`nvidia`, `huawei`) or its software stack (`cuda`,
//! `cann`); both come to the vendor label the agents publish on their nodes
//! (`zhisuan.io/accelerator-vendor`). A job that names none runs on NVIDIA
//! only (a CUDA image on an NPU fails), unless its tenant has a default.

/// The vendors and stacks a job may name, and the vendor each comes to.
pub const VENDOR_NAMES: [(&str, &str); 5] = [
    ("nvidia", "nvidia"),
    ("cuda", "nvidia"),
    ("huawei", "huawei"),
    ("ascend", "huawei"),
    ("cann", "huawei"),
];

/// The vendor `raw` names (case and surrounding space ignored); the error
/// lists what is accepted.
pub fn accelerator_vendor(raw: &str) -> Result<&'static str, String> {
    let key = raw.trim().to_ascii_lowercase();
    VENDOR_NAMES
        .iter()
        .find(|(name, _)| *name == key)
        .map(|(_, vendor)| *vendor)
        .ok_or_else(|| {
            let names: Vec<&str> = VENDOR_NAMES.iter().map(|(n, _)| *n).collect();
            format!(
                "unknown accelerator vendor {raw:?}; use one of {} (empty = nvidia)",
                names.join(", ")
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacks_come_to_their_vendor_and_typos_are_refused() {
        assert_eq!(accelerator_vendor("CUDA"), Ok("nvidia"));
        assert_eq!(accelerator_vendor(" cann "), Ok("huawei"));
        assert_eq!(accelerator_vendor("huawei"), Ok("huawei"));
        let e = accelerator_vendor("nvida").unwrap_err();
        assert!(e.contains("\"nvida\"") && e.contains("cuda"), "{e}");
    }
}
