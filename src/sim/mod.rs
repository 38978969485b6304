//! Simulators: trace replay (issue #2) and the multi-region simulation (issue #3).

pub mod backend;
pub mod compare;
pub mod generate;
pub mod jobtable;
pub mod openb;
pub mod outcomes;
pub mod regions;
pub mod replay;
pub mod sweep;
pub mod workload;
pub mod world;

/// Writes rows as CSV with a header (a workload, job outcomes).
pub fn write_csv<T: serde::Serialize>(rows: &[T], out: impl std::io::Write) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_writer(out);
    for r in rows {
        w.serialize(r)?;
    }
    w.flush()?;
    Ok(())
}
