//! Reader for the openb trace CSVs (Alibaba cluster-trace-gpu-v2023).
//! Columns are found by header name, never by position; every error names
//! the file, the line and the column.

use std::path::Path;

use crate::error::InputError;
use crate::placement::{GpuDemand, ModelTable, NodeSpec, Request};

/// One pod of a trace.
#[derive(Clone, Debug)]
pub struct TracePod {
    pub name: String,
    pub request: Request,
}

struct Table {
    file: String,
    headers: Vec<String>,
    reader: csv::Reader<std::fs::File>,
}

impl Table {
    fn open(path: &Path) -> Result<Self, InputError> {
        let file = path.display().to_string();
        let reader = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_path(path)
            .map_err(|e| InputError::new(format!("{file}: cannot read: {e}")))?;
        let mut t = Table {
            file,
            headers: Vec::new(),
            reader,
        };
        t.headers = t
            .reader
            .headers()
            .map_err(|e| InputError::new(format!("{}:1: cannot read the header row: {e}", t.file)))?
            .iter()
            .map(|h| h.to_string())
            .collect();
        Ok(t)
    }

    fn column(&self, name: &str, required: bool) -> Result<Option<usize>, InputError> {
        match self.headers.iter().position(|h| h == name) {
            Some(i) => Ok(Some(i)),
            None if required => Err(InputError::new(format!(
                "{}:1: missing column `{name}` in the header row (found: {}); add it",
                self.file,
                self.headers.join(",")
            ))),
            None => Ok(None),
        }
    }

    /// Calls `row` for each record with its line number.
    fn rows(
        &mut self,
        mut row: impl FnMut(&csv::StringRecord, u64) -> Result<(), InputError>,
    ) -> Result<(), InputError> {
        let file = self.file.clone();
        for rec in self.reader.records() {
            let rec = rec.map_err(|e| {
                let line = e.position().map_or(0, |p| p.line());
                InputError::new(format!("{file}:{line}: malformed CSV row: {e}"))
            })?;
            let line = rec.position().map_or(0, |p| p.line());
            row(&rec, line)?;
        }
        Ok(())
    }

    fn int(&self, rec: &csv::StringRecord, line: u64, col: usize) -> Result<u64, InputError> {
        let v = rec.get(col).unwrap_or("");
        v.parse::<u64>().map_err(|_| {
            InputError::new(format!(
                "{}:{line}:{}: column `{}` must be a non-negative integer, found {v:?}",
                self.file,
                col + 1,
                self.headers[col]
            ))
        })
    }

    fn err(&self, line: u64, col: usize, msg: impl std::fmt::Display) -> InputError {
        InputError::new(format!(
            "{}:{line}:{}: column `{}`: {msg}",
            self.file,
            col + 1,
            self.headers[col]
        ))
    }
}

/// Reads a node list (`sn,cpu_milli,memory_mib,gpu,model`).
pub fn load_nodes(path: &Path) -> Result<Vec<NodeSpec>, InputError> {
    let mut t = Table::open(path)?;
    let sn = t.column("sn", true)?.unwrap_or(0);
    let cpu = t.column("cpu_milli", true)?.unwrap_or(0);
    let mem = t.column("memory_mib", true)?.unwrap_or(0);
    let gpu = t.column("gpu", true)?.unwrap_or(0);
    let model = t.column("model", true)?.unwrap_or(0);
    let mut nodes = Vec::new();
    let mut rows = Vec::new();
    t.rows(|rec, line| {
        rows.push((rec.clone(), line));
        Ok(())
    })?;
    for (rec, line) in rows {
        let name = rec.get(sn).unwrap_or("").to_string();
        if name.is_empty() {
            return Err(t.err(line, sn, "node name is empty"));
        }
        let cpu_milli = t.int(&rec, line, cpu)?;
        let cpu_milli = u32::try_from(cpu_milli).map_err(|_| t.err(line, cpu, "too large"))?;
        let memory_mib = t.int(&rec, line, mem)?;
        let gpus = t.int(&rec, line, gpu)?;
        if gpus > crate::placement::MAX_DEVICES_PER_NODE as u64 {
            return Err(t.err(line, gpu, format!("{gpus} GPUs on one node; at most 64")));
        }
        let m = rec.get(model).unwrap_or("").to_string();
        if gpus > 0 && m.is_empty() {
            return Err(t.err(line, model, "empty, but the node has GPUs: name the model"));
        }
        nodes.push(NodeSpec {
            name,
            cpu_milli,
            memory_mib,
            gpus: gpus as u8,
            model: m,
            labels: Vec::new(),
        });
    }
    if nodes.is_empty() {
        return Err(InputError::new(format!("{}: no nodes listed", t.file)));
    }
    Ok(nodes)
}

/// Reads a pod list. `gpu_spec` (optional column; empty = any model) is
/// resolved against `models`; models no node has are added to it (such pods
/// then fit nowhere).
pub fn load_pods(path: &Path, models: &mut ModelTable) -> Result<Vec<TracePod>, InputError> {
    let mut t = Table::open(path)?;
    let name = t.column("name", true)?.unwrap_or(0);
    let cpu = t.column("cpu_milli", true)?.unwrap_or(0);
    let mem = t.column("memory_mib", true)?.unwrap_or(0);
    let num_gpu = t.column("num_gpu", true)?.unwrap_or(0);
    let gpu_milli = t.column("gpu_milli", true)?.unwrap_or(0);
    let spec = t.column("gpu_spec", false)?;
    let mut rows = Vec::new();
    t.rows(|rec, line| {
        rows.push((rec.clone(), line));
        Ok(())
    })?;
    let mut pods = Vec::with_capacity(rows.len());
    for (rec, line) in rows {
        let pod_name = rec.get(name).unwrap_or("").to_string();
        if pod_name.is_empty() {
            return Err(t.err(line, name, "pod name is empty"));
        }
        let cpu_milli =
            u32::try_from(t.int(&rec, line, cpu)?).map_err(|_| t.err(line, cpu, "too large"))?;
        let memory_mib = t.int(&rec, line, mem)?;
        let n = t.int(&rec, line, num_gpu)?;
        let m = t.int(&rec, line, gpu_milli)?;
        if m > 1000 {
            return Err(t.err(
                line,
                gpu_milli,
                format!("{m} is more than one device (1000)"),
            ));
        }
        let gpu = GpuDemand::from_trace(n.min(u32::MAX as u64) as u32, m as u32)
            .map_err(|e| t.err(line, if n > 64 { num_gpu } else { gpu_milli }, e))?;
        let mut request = Request::new(cpu_milli, memory_mib, gpu);
        if let Some(col) = spec {
            let s = rec.get(col).unwrap_or("");
            for model in s.split('|').map(str::trim).filter(|x| !x.is_empty()) {
                models.intern(model).map_err(|e| t.err(line, col, e))?;
            }
            request.models = models.parse_set(s).map_err(|e| t.err(line, col, e))?;
        }
        pods.push(TracePod {
            name: pod_name,
            request,
        });
    }
    if pods.is_empty() {
        // A header alone would replay to all-zero figures that look like results.
        return Err(InputError::new(format!("{}: no pods listed", t.file)));
    }
    Ok(pods)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn a_trace_without_pods_is_refused() {
        let p = file("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n");
        let e = load_pods(p.path(), &mut ModelTable::new()).unwrap_err();
        assert!(e.to_string().contains("no pods listed"), "{e}");
    }

    #[test]
    fn reads_by_header_name() {
        let f = file("model,gpu,sn,memory_mib,cpu_milli\nT4,2,n1,1024,8000\n");
        let nodes = load_nodes(f.path()).unwrap();
        assert_eq!(nodes[0].name, "n1");
        assert_eq!((nodes[0].cpu_milli, nodes[0].gpus), (8000, 2));
        let mut models = ModelTable::new();
        models.intern("T4").unwrap();
        let p = file("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\np0,1000,10,1,500,T4|A100\np1,0,0,2,1000,\n");
        let pods = load_pods(p.path(), &mut models).unwrap();
        assert_eq!(pods[0].request.gpu, GpuDemand::Shared { milli: 500 });
        assert!(pods[0].request.models.contains(models.id("A100").unwrap()));
        assert_eq!(pods[1].request.gpu, GpuDemand::Whole { count: 2 });
    }

    #[test]
    fn errors_name_file_line_column() {
        let f = file("sn,cpu_milli,memory_mib,gpu,model\nn0,64000,1,2,T4\nn1,lots,1,2,T4\n");
        let e = load_nodes(f.path()).unwrap_err().to_string();
        let want = format!("{}:3:2: column `cpu_milli`", f.path().display());
        assert!(e.contains(&want), "{e}");
        let f = file("name,cpu_milli,memory_mib,num_gpu\np,1,1,1\n");
        let e = load_pods(f.path(), &mut ModelTable::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing column `gpu_milli`"), "{e}");
        let f = file("name,cpu_milli,memory_mib,num_gpu,gpu_milli\np,1,1,2,500\n");
        let e = load_pods(f.path(), &mut ModelTable::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains(":2:5:"), "{e}");
    }
}
