//! `zhisuan replay` end to end on hand-computed tiny clusters (the protocol of docs/benchmarks.md).

use std::path::Path;
use std::process::Command;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn replay(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_zhisuan"))
        .arg("replay")
        .args(args)
        .output()
        .unwrap()
}

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

const NODES: &str = "sn,cpu_milli,memory_mib,gpu,model\nn0,4000,1000,1,T4\nn1,4000,1000,1,T4\n";

#[test]
fn tuning_appends_pods_and_failures_count() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = write(dir.path(), "nodes.csv", NODES);
    // Three 600-milli pods; capacity 2000 → target 2600: one more pod is
    // appended (2400), the next would cross. Each GPU holds one 600 pod:
    // arrived 30, 60, 90, 120 %; allocated 30, 60, 60, 60 %.
    let pods = write(
        dir.path(),
        "pods.csv",
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np0,100,10,1,600\np1,100,10,1,600\np2,100,10,1,600\n",
    );
    for policy in ["bestfit", "fgd", "default", "random"] {
        let v = json(&replay(&[
            "--nodes", &nodes, "--pods", &pods, "--policy", policy, "--seeds", "3", "--json",
        ]));
        assert_eq!(v["nodes"], 2);
        assert_eq!(v["gpus"], 2);
        assert_eq!(v["seeds"], 3);
        assert_eq!(v["pods_arrived"], 4.0, "{policy}");
        assert_eq!(v["pods_failed"], 2.0, "{policy}");
        let a = &v["alloc_pct_at_arrival"];
        // 90 is recorded exactly; 100 and 130 take the nearest record (90 %, 120 %).
        assert_eq!(
            (a["90"].as_f64(), a["100"].as_f64(), a["130"].as_f64()),
            (Some(60.0), Some(60.0), Some(60.0)),
            "{policy}"
        );
        assert!(v["decisions_per_sec"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn tuning_removes_pods_above_target() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = write(dir.path(), "nodes.csv", NODES);
    // Five whole-GPU pods (5000 milli) exceed 2600: pods are removed until 2000
    // remain; both fit. Arrived 50, 100 %: allocation 100 % at 100 and nearest.
    let rows: String = (0..5).map(|i| format!("p{i},100,10,1,1000,\n")).collect();
    let pods = write(
        dir.path(),
        "pods.csv",
        &format!("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n{rows}"),
    );
    let v = json(&replay(&[
        "--nodes", &nodes, "--pods", &pods, "--policy", "fgd", "--json",
    ]));
    assert_eq!(v["pods_arrived"], 2.0);
    assert_eq!(v["pods_failed"], 0.0);
    assert_eq!(v["alloc_pct_at_arrival"]["100"], 100.0);
    assert_eq!(v["alloc_pct_at_arrival"]["90"], 100.0);
}

#[test]
fn model_constraint_in_the_trace_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = write(
        dir.path(),
        "nodes.csv",
        "sn,cpu_milli,memory_mib,gpu,model\nn0,4000,1000,1,T4\nn1,4000,1000,1,A10\n",
    );
    // Every pod wants an A10: only one whole GPU of the two can be used.
    let rows: String = (0..2)
        .map(|i| format!("p{i},100,10,1,1000,A10\n"))
        .collect();
    let pods = write(
        dir.path(),
        "pods.csv",
        &format!("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec\n{rows}"),
    );
    let v = json(&replay(&[
        "--nodes", &nodes, "--pods", &pods, "--json", "--tune", "1.0",
    ]));
    assert_eq!(v["pods_arrived"], 2.0);
    assert_eq!(v["pods_failed"], 1.0);
    assert_eq!(v["alloc_pct_at_arrival"]["100"], 50.0);
}

#[test]
fn bad_input_exits_2_naming_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = write(dir.path(), "nodes.csv", NODES);
    let pods = write(
        dir.path(),
        "pods.csv",
        "name,cpu_milli,memory_mib,num_gpu,gpu_milli\np0,100,10,1,600\np1,100,ten,1,600\n",
    );
    let out = replay(&["--nodes", &nodes, "--pods", &pods]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{pods}:3:3")) && err.contains("memory_mib"),
        "{err}"
    );

    let out = replay(&["--nodes", &nodes, "--pods", &pods, "--policy", "tetris"]);
    assert_eq!(out.status.code(), Some(2));
    let out = replay(&["--nodes", "/nonexistent/nodes.csv"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/nodes.csv"));
}

#[test]
fn shipped_trace_replays_with_defaults() {
    let out = Command::new(env!("CARGO_BIN_EXE_zhisuan"))
        .current_dir(std::env::temp_dir())
        .args(["replay", "--policy", "bestfit", "--json"])
        .output()
        .unwrap();
    let v = json(&out);
    // stderr is a pipe here: no progress bar, no escape codes.
    assert!(
        !out.stderr.contains(&0x1b) && !String::from_utf8_lossy(&out.stderr).contains("seeds"),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(v["trace"], "openb_pod_list_default");
    assert_eq!(
        (v["nodes"].as_u64(), v["gpus"].as_u64()),
        (Some(1213), Some(6212))
    );
    let a = v["alloc_pct_at_arrival"]["130"].as_f64().unwrap();
    assert!(a > 85.0 && a <= 100.0, "{a}");
}
