//! The chart's ValidatingAdmissionPolicies, evaluated: the chart is rendered
//! (helm's library), and each policy's match conditions, variables and
//! validations — the CEL the API server would run — are evaluated with
//! cel-python on admission requests as the API server builds them. No API
//! server can run here; the expressions are the rendered ones.

#[path = "support/dashboards.rs"]
mod dashboards;

use dashboards::repo_root;
use serde_json::{json, Value};
use std::process::Command;

/// Renders the chart with argv[2] (JSON values) and evaluates each case of
/// argv[3] (a JSON list of {policy, operation, resource, subResource,
/// object, oldObject, request, namespaceObject}) against the policy of that
/// name. Prints per case: whether the policy applies (its resource rules and
/// match conditions), the messages of the validations that failed, and any
/// evaluation error (a broken expression must not pass for a denial).
const EVALUATE_SCRIPT: &str = r#"
import json, sys, yaml
import celpy
from celpy import celtypes
from helm_python import chart
root, values, cases = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
rendered = chart.Chart.load(root + "/charts/zhisuan").render(
    values, name="zs", namespace="zhisuan", is_install=True)
policies = {d["metadata"]["name"]: d for p, t in rendered.items() if p.endswith(".yaml")
            for d in yaml.safe_load_all(t) if d and d["kind"] == "ValidatingAdmissionPolicy"}
env = celpy.Environment()
def run(expr, act):
    value = env.program(env.compile(expr)).evaluate(act)
    if isinstance(value, celpy.CELEvalError):
        raise ValueError(f"{expr}: {value}")
    return value
out = []
for case in cases:
    res = {"applies": False, "denied": [], "errors": []}
    out.append(res)
    p = policies.get(case["policy"])
    if p is None:
        res["errors"].append(f"no policy {case['policy']} rendered: {sorted(policies)}")
        continue
    spec = p["spec"]
    resource = case["resource"] + ("/" + case["subResource"] if case.get("subResource") else "")
    if not any(case["operation"] in r["operations"] and resource in r["resources"]
               for r in spec["matchConstraints"]["resourceRules"]):
        continue
    act = {k: celpy.json_to_cel(case.get(k)) for k in
           ("object", "oldObject", "request", "namespaceObject")}
    try:
        if not all(bool(run(m["expression"], act)) for m in spec.get("matchConditions", [])):
            continue
        res["applies"] = True
        variables = celtypes.MapType({})
        for v in spec.get("variables", []):
            act["variables"] = variables
            variables = celtypes.MapType({**variables, celtypes.StringType(v["name"]): run(v["expression"], act)})
        act["variables"] = variables
        for v in spec["validations"]:
            if not bool(run(v["expression"], act)):
                msg = run(v["messageExpression"], act) if "messageExpression" in v else v["message"]
                res["denied"].append(str(msg))
    except Exception as e:
        res["errors"].append(str(e))
print(json.dumps(out))
"#;

fn have_tools() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import celpy, helm_python"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok && std::env::var_os("CI").is_some() {
        panic!("cel-python and helm-python-sdk are not installed (CI): pip install cel-python helm-python-sdk");
    }
    if !ok {
        eprintln!("skipped: cel-python / helm-python-sdk not installed");
    }
    ok
}

/// What each case came to: (applies, denied messages); evaluation errors fail.
fn evaluate(values: Value, cases: &[Value]) -> Vec<(bool, Vec<String>)> {
    let out = Command::new("python3")
        .args(["-c", EVALUATE_SCRIPT])
        .arg(repo_root())
        .arg(values.to_string())
        .arg(Value::Array(cases.to_vec()).to_string())
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "evaluating the policies failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let res: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    res.iter()
        .zip(cases)
        .map(|(r, case)| {
            assert_eq!(r["errors"], json!([]), "evaluation error in {case}");
            let denied = r["denied"].as_array().unwrap();
            let denied = denied.iter().map(|m| m.as_str().unwrap().to_string());
            (r["applies"].as_bool().unwrap(), denied.collect())
        })
        .collect()
}

/// One expectation: the policy does not apply, allows, or denies with a
/// message containing the words.
enum Want {
    NotApplied,
    Allowed,
    Denied(&'static str),
}

fn check(values: Value, cases: Vec<(&str, Value, Want)>) {
    let requests: Vec<Value> = cases.iter().map(|(_, c, _)| c.clone()).collect();
    for ((what, case, want), (applies, denied)) in cases.iter().zip(evaluate(values, &requests)) {
        match want {
            Want::NotApplied => assert!(!applies, "{what}: applied to {case}"),
            Want::Allowed => {
                assert!(applies, "{what}: not applied");
                assert!(denied.is_empty(), "{what}: denied {denied:?}");
            }
            Want::Denied(words) => {
                assert!(applies, "{what}: not applied");
                assert!(
                    denied.iter().any(|m| m.contains(words)),
                    "{what}: wanted a denial saying {words:?}, got {denied:?}"
                );
            }
        }
    }
}

const AGENT: &str = "system:serviceaccount:zhisuan:zs-zhisuan-agent";
const CONTROLLER: &str = "system:serviceaccount:zhisuan:zs-zhisuan-controller";

fn node(name: &str, labels: Value, annotations: Value, taints: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": name, "labels": labels, "annotations": annotations},
           "spec": {"taints": taints}})
}

/// An agent's (or someone's) update of Node `gpu-1`.
fn node_update(user: &str, on_node: Option<&str>, old: Value, new: Value) -> Value {
    let extra = match on_node {
        Some(n) => json!({"authentication.kubernetes.io/node-name": [n]}),
        None => json!({}),
    };
    json!({"policy": "zs-zhisuan-agent-node", "operation": "UPDATE", "resource": "nodes",
           "object": new, "oldObject": old, "namespaceObject": null,
           "request": {"operation": "UPDATE", "name": new["metadata"]["name"],
                       "userInfo": {"username": user, "extra": extra}}})
}

#[test]
fn the_agent_may_change_only_its_own_nodes_zhisuan_labels() {
    if !have_tools() {
        return;
    }
    let labels = json!({"kubernetes.io/hostname": "gpu-1", "zhisuan.io/gpu-model": "H100",
                        "zhisuan.io/dedicated-to": "fujian-gov"});
    let ann = json!({"zhisuan.io/agent-heartbeat": "1", "other.io/x": "y"});
    let taints = json!([{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]);
    let old = node("gpu-1", labels.clone(), ann.clone(), taints.clone());
    let with = |f: &dyn Fn(&mut Value)| {
        let mut n = old.clone();
        f(&mut n);
        n
    };
    let relabelled = with(&|n| n["metadata"]["labels"]["zhisuan.io/gpu-model"] = json!("A100"));
    let agent = |new: Value| node_update(AGENT, Some("gpu-1"), old.clone(), new);
    check(
        json!({"admissionPolicies": "always"}),
        vec![
            (
                "its own zhisuan labels",
                agent(relabelled.clone()),
                Want::Allowed,
            ),
            (
                "its own zhisuan annotations",
                agent(with(&|n| {
                    n["metadata"]["annotations"]["zhisuan.io/agent-heartbeat"] = json!("2")
                })),
                Want::Allowed,
            ),
            (
                "another node",
                node_update(AGENT, Some("gpu-2"), old.clone(), relabelled.clone()),
                Want::Denied("may change only the Node its pod runs on (gpu-2), not gpu-1"),
            ),
            (
                "a token bound to no node",
                node_update(AGENT, None, old.clone(), relabelled.clone()),
                Want::Denied("its token names none"),
            ),
            (
                "leaving its dedicated zone",
                agent(with(&|n| {
                    n["metadata"]["labels"]
                        .as_object_mut()
                        .unwrap()
                        .remove("zhisuan.io/dedicated-to");
                })),
                Want::Denied("never zhisuan.io/dedicated-to"),
            ),
            (
                "joining another zone",
                agent(with(&|n| {
                    n["metadata"]["labels"]["zhisuan.io/node-group"] = json!("gov-zone")
                })),
                Want::Denied("never zhisuan.io/dedicated-to or zhisuan.io/node-group"),
            ),
            (
                "a label not zhisuan's",
                agent(with(&|n| {
                    n["metadata"]["labels"]["kubernetes.io/hostname"] = json!("x")
                })),
                Want::Denied("only zhisuan.io/ labels"),
            ),
            (
                "an annotation not zhisuan's",
                agent(with(&|n| {
                    n["metadata"]["annotations"]
                        .as_object_mut()
                        .unwrap()
                        .remove("other.io/x");
                })),
                Want::Denied("only zhisuan.io/ annotations"),
            ),
            (
                "its taints",
                agent(with(&|n| n["spec"]["taints"] = json!([]))),
                Want::Denied("may not change a Node's spec"),
            ),
            (
                "an administrator",
                node_update(
                    "kubernetes-admin",
                    None,
                    old.clone(),
                    with(&|n| n["metadata"]["labels"]["zhisuan.io/node-group"] = json!("gov-zone")),
                ),
                Want::NotApplied,
            ),
        ],
    );
}

fn namespace(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

/// A pod as the controller builds it (workload labels, tenant annotation,
/// scheduler zhisuan), of `tenant`.
fn zhisuan_pod(ns: &str, tenant: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "train-0", "namespace": ns,
                        "labels": {"zhisuan.io/workload": "train", "zhisuan.io/workload-kind": "training"},
                        "annotations": {"zhisuan.io/tenant": tenant}},
           "spec": {"schedulerName": "zhisuan", "containers": [{"name": "c", "image": "i"}]}})
}

fn pod_request(user: &str, operation: &str, pod: Value, ns: Value, sub: Option<&str>) -> Value {
    let (object, old) = match operation {
        "DELETE" => (Value::Null, pod.clone()),
        _ => (pod.clone(), Value::Null),
    };
    json!({"policy": "zs-zhisuan-controller-pods", "operation": operation, "resource": "pods",
           "subResource": sub, "object": object, "oldObject": old, "namespaceObject": ns,
           "request": {"operation": operation, "namespace": pod["metadata"]["namespace"],
                       "name": pod["metadata"]["name"], "subResource": sub.unwrap_or(""),
                       "userInfo": {"username": user}}})
}

#[test]
fn the_controller_writes_only_zhisuan_pods_of_the_namespaces_tenant() {
    if !have_tools() {
        return;
    }
    let acme_ns = namespace("acme-ml", json!({"zhisuan.io/tenant": "acme"}));
    let shared = namespace("zhisuan-jobs", json!({"zhisuan.io/multi-tenant": "true"}));
    let system = namespace("kube-system", json!({}));
    let c = |op: &str, pod: Value, ns: &Value| pod_request(CONTROLLER, op, pod, ns.clone(), None);
    let mut foreign = zhisuan_pod("acme-ml", "acme");
    foreign["metadata"]["labels"] = json!({"app": "db"});
    let mut unscheduled = zhisuan_pod("acme-ml", "acme");
    unscheduled["spec"]["schedulerName"] = json!("default-scheduler");
    let binding = json!({"apiVersion": "v1", "kind": "Binding",
                         "metadata": {"name": "train-0", "namespace": "acme-ml"},
                         "target": {"kind": "Node", "name": "gpu-1"}});
    let cases = |required: bool| {
        vec![
            (
                "a tenant's pod in its namespace",
                c("CREATE", zhisuan_pod("acme-ml", "acme"), &acme_ns),
                Want::Allowed,
            ),
            (
                "deleting it",
                c("DELETE", zhisuan_pod("acme-ml", "acme"), &acme_ns),
                Want::Allowed,
            ),
            (
                "binding it",
                pod_request(
                    CONTROLLER,
                    "CREATE",
                    binding.clone(),
                    acme_ns.clone(),
                    Some("binding"),
                ),
                Want::Allowed,
            ),
            (
                "any tenant's in the API's namespace",
                c("CREATE", zhisuan_pod("zhisuan-jobs", "rival"), &shared),
                Want::Allowed,
            ),
            (
                "another tenant's pod in acme's namespace",
                c("CREATE", zhisuan_pod("acme-ml", "rival"), &acme_ns),
                Want::Denied("belongs to tenant acme"),
            ),
            (
                "a pod that is not zhisuan's",
                c("CREATE", foreign.clone(), &acme_ns),
                Want::Denied("only pods of zhisuan workloads"),
            ),
            (
                "deleting a pod that is not zhisuan's",
                c("DELETE", foreign.clone(), &acme_ns),
                Want::Denied("only pods of zhisuan workloads"),
            ),
            (
                "a pod another scheduler places",
                c("CREATE", unscheduled.clone(), &acme_ns),
                Want::Denied("spec.schedulerName: zhisuan"),
            ),
            (
                "a pod in kube-system",
                c("CREATE", zhisuan_pod("kube-system", "acme"), &system),
                if required {
                    Want::Denied("is bound to no tenant")
                } else {
                    Want::Allowed
                },
            ),
            (
                "someone else",
                pod_request(
                    "kubernetes-admin",
                    "CREATE",
                    foreign.clone(),
                    system.clone(),
                    None,
                ),
                Want::NotApplied,
            ),
        ]
    };
    check(json!({"admissionPolicies": "always"}), cases(true));
    check(
        json!({"admissionPolicies": "always", "controller": {"tenantNamespaces": "optional"}}),
        cases(false),
    );
}

/// The tenant ↔ namespace rule at admission (the controller re-checks it).
#[test]
fn a_workload_names_the_tenant_of_its_namespace() {
    if !have_tools() {
        return;
    }
    let job = |ns: &str, tenant: &str| {
        json!({"apiVersion": "zhisuan.io/v1alpha1", "kind": "TrainingJob",
               "metadata": {"name": "j", "namespace": ns}, "spec": {"tenant": tenant}})
    };
    let req = |user: &str, obj: Value, ns: Value| {
        json!({"policy": "zs-zhisuan-tenant-namespace", "operation": "CREATE", "resource": "trainingjobs",
               "object": obj.clone(), "oldObject": null, "namespaceObject": ns,
               "request": {"operation": "CREATE", "namespace": obj["metadata"]["namespace"],
                           "userInfo": {"username": user}}})
    };
    let acme_ns = namespace("acme-ml", json!({"zhisuan.io/tenant": "acme"}));
    let shared = namespace("zhisuan-jobs", json!({"zhisuan.io/multi-tenant": "true"}));
    let api = "system:serviceaccount:zhisuan:zs-zhisuan-api";
    check(
        json!({"admissionPolicies": "always"}),
        vec![
            (
                "its own tenant",
                req("alice", job("acme-ml", "acme"), acme_ns.clone()),
                Want::Allowed,
            ),
            (
                "another tenant",
                req("alice", job("acme-ml", "rival"), acme_ns.clone()),
                Want::Denied("is not the tenant of namespace acme-ml"),
            ),
            (
                "the API in its namespace",
                req(api, job("zhisuan-jobs", "rival"), shared.clone()),
                Want::Allowed,
            ),
            (
                "a user in the API's namespace",
                req("alice", job("zhisuan-jobs", "rival"), shared),
                Want::Denied("only the zhisuan API writes"),
            ),
            (
                "an unbound namespace",
                req("alice", job("misc", "acme"), namespace("misc", json!({}))),
                Want::Denied("is bound to no tenant"),
            ),
        ],
    );
}

/// `auto` renders the policies only where the API server serves them (an
/// offline render has none); `never` renders none; a typo is refused.
#[test]
fn admission_policies_render_as_asked() {
    if !have_tools() {
        return;
    }
    let count = |values: Value| -> Result<usize, String> {
        let script = r#"
import json, sys, yaml
from helm_python import chart
r = chart.Chart.load(sys.argv[1] + "/charts/zhisuan").render(json.loads(sys.argv[2]), name="zs", namespace="zhisuan", is_install=True)
print(sum(1 for p, t in r.items() if p.endswith(".yaml") for d in yaml.safe_load_all(t) if d and d["kind"] == "ValidatingAdmissionPolicy"))
"#;
        let out = Command::new("python3")
            .args(["-c", script])
            .arg(repo_root())
            .arg(values.to_string())
            .output()
            .unwrap();
        match out.status.success() {
            true => Ok(String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()),
            false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
        }
    };
    assert_eq!(count(json!({"admissionPolicies": "always"})), Ok(3));
    assert_eq!(count(json!({})), Ok(0), "auto, offline");
    assert_eq!(count(json!({"admissionPolicies": "never"})), Ok(0));
    // A typo is refused naming the value (the values schema's enum).
    let e = count(json!({"admissionPolicies": "sometimes"})).unwrap_err();
    assert!(e.contains("admissionPolicies"), "{e}");
}
