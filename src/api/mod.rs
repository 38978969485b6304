//! The quota API for SMEs and admins (axum) (issue #7).

pub mod cli;
pub mod page;
