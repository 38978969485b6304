//! What a tenant's pod template may ask of the node (issue #16, item 2).
//!
//! The controller creates pods from tenants' templates with its own rights,
//! in the home cluster and in member clusters, so it applies the Kubernetes
//! Pod Security Standards itself rather than trusting every namespace to
//! have Pod Security admission: `baseline` by default (no privileged
//! containers, host namespaces, hostPath volumes, host ports, added
//! capabilities beyond the default set, unconfined seccomp/AppArmor, unsafe
//! sysctls, custom SELinux users/roles), `restricted` or `privileged` per
//! TenantQuota (`spec.podSecurity`, inherited down the tenant tree). Pure:
//! every violation is a [`FieldError`] naming the template field.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, PodSecurityContext, PodSpec, PodTemplateSpec, SecurityContext, Volume,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::jobs::FieldError;

/// A Pod Security Standards level.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum PodSecurityLevel {
    /// Anything goes (trusted system tenants only).
    Privileged,
    /// No known privilege escalation (the default).
    #[default]
    Baseline,
    /// Hardened: non-root, no privilege escalation, capabilities dropped,
    /// seccomp on, only ephemeral/claim/config volumes.
    Restricted,
}

impl PodSecurityLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            PodSecurityLevel::Privileged => "privileged",
            PodSecurityLevel::Baseline => "baseline",
            PodSecurityLevel::Restricted => "restricted",
        }
    }
}

/// Each tenant's level: its TenantQuota's `podSecurity`, else the nearest
/// ancestor's, else baseline. `quotas` is `(tenant, parent, level)`.
pub fn tenant_levels(
    quotas: &[(String, Option<String>, Option<PodSecurityLevel>)],
) -> BTreeMap<String, PodSecurityLevel> {
    let mut levels = super::tenancy::inherited(quotas);
    for (tenant, _, _) in quotas {
        levels.entry(tenant.clone()).or_default();
    }
    levels
}

/// Capabilities a baseline container may add (the container runtime's defaults).
const BASELINE_CAPABILITIES: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// Sysctls safe for any pod (namespaced, isolated).
const SAFE_SYSCTLS: [&str; 10] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];

/// SELinux types a baseline pod may run as.
const SELINUX_TYPES: [&str; 4] = [
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];

/// The violations of `level` in a workload's `spec.template`; below the
/// privileged level the pods run as the namespace's `default` service
/// account or one of `service_accounts` (the tenant's TenantQuota
/// `spec.serviceAccounts`): naming another would hand the tenant's code
/// that account's API rights (in the API's shared namespace, the API's own).
pub fn check_template(
    template: &PodTemplateSpec,
    level: PodSecurityLevel,
    service_accounts: &[String],
) -> Vec<FieldError> {
    let mut c = Checker {
        level,
        errors: Vec::new(),
    };
    if level == PodSecurityLevel::Privileged {
        return c.errors;
    }
    if let Some(spec) = &template.spec {
        c.pod(spec);
        c.service_account(spec, service_accounts);
    }
    c.errors
}

struct Checker {
    level: PodSecurityLevel,
    errors: Vec<FieldError>,
}

/// What a pod's and a container's security context have in common.
struct Shared<'a> {
    selinux: Option<&'a k8s_openapi::api::core::v1::SELinuxOptions>,
    seccomp: Option<&'a str>,
    apparmor: Option<&'a str>,
    host_process: Option<bool>,
}

const SPEC: &str = "spec.template.spec";

impl Checker {
    fn refuse(&mut self, field: String, why: &str) {
        self.errors.push(FieldError {
            field,
            message: format!(
                "{why}: not allowed at Pod Security level {} (a TenantQuota's spec.podSecurity sets the tenant's level)",
                self.level.as_str()
            ),
        });
    }

    fn service_account(&mut self, spec: &PodSpec, allowed: &[String]) {
        #[allow(deprecated)]
        let named = [
            ("serviceAccountName", spec.service_account_name.as_deref()),
            ("serviceAccount", spec.service_account.as_deref()),
        ];
        for (field, name) in named {
            let Some(name) = name.filter(|n| !n.is_empty() && *n != "default") else {
                continue;
            };
            if !allowed.iter().any(|a| a == name) {
                self.errors.push(FieldError {
                    field: format!("{SPEC}.{field}"),
                    message: format!(
                        "service account {name:?}: not one the tenant may use (pods run as the namespace's default account; list it in the tenant's TenantQuota spec.serviceAccounts to allow it)"
                    ),
                });
            }
        }
    }

    fn restricted(&self) -> bool {
        self.level == PodSecurityLevel::Restricted
    }

    fn pod(&mut self, spec: &PodSpec) {
        for (set, field) in [
            (spec.host_network, "hostNetwork"),
            (spec.host_pid, "hostPID"),
            (spec.host_ipc, "hostIPC"),
        ] {
            if set == Some(true) {
                self.refuse(format!("{SPEC}.{field}"), "sharing the node's namespaces");
            }
        }
        for (i, v) in spec.volumes.iter().flatten().enumerate() {
            self.volume(i, v);
        }
        let pod_ctx = spec.security_context.as_ref();
        if let Some(ctx) = pod_ctx {
            self.pod_context(ctx);
        }
        let lists = [
            ("containers", spec.containers.iter().collect::<Vec<_>>()),
            (
                "initContainers",
                spec.init_containers.iter().flatten().collect(),
            ),
        ];
        for (list, containers) in lists {
            for (i, c) in containers.into_iter().enumerate() {
                let at = format!("{SPEC}.{list}[{i}]");
                for (j, p) in c.ports.iter().flatten().enumerate() {
                    if p.host_port.is_some_and(|h| h != 0) {
                        self.refuse(format!("{at}.ports[{j}].hostPort"), "a host port");
                    }
                }
                self.container(&at, c.security_context.as_ref(), pod_ctx);
            }
        }
        for (i, c) in spec.ephemeral_containers.iter().flatten().enumerate() {
            let at = format!("{SPEC}.ephemeralContainers[{i}]");
            self.container(&at, c.security_context.as_ref(), pod_ctx);
        }
    }

    fn volume(&mut self, i: usize, v: &Volume) {
        let at = format!("{SPEC}.volumes[{i}]");
        if v.host_path.is_some() {
            self.refuse(format!("{at}.hostPath"), "a hostPath volume");
            return;
        }
        let allowed = v.config_map.is_some()
            || v.csi.is_some()
            || v.downward_api.is_some()
            || v.empty_dir.is_some()
            || v.ephemeral.is_some()
            || v.persistent_volume_claim.is_some()
            || v.projected.is_some()
            || v.secret.is_some();
        if self.restricted() && !allowed {
            self.refuse(
                at,
                "a volume type other than configMap, csi, downwardAPI, emptyDir, ephemeral, persistentVolumeClaim, projected or secret",
            );
        }
    }

    fn pod_context(&mut self, ctx: &PodSecurityContext) {
        let at = format!("{SPEC}.securityContext");
        self.shared(
            &at,
            Shared {
                selinux: ctx.se_linux_options.as_ref(),
                seccomp: ctx.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
                apparmor: ctx.app_armor_profile.as_ref().map(|a| a.type_.as_str()),
                host_process: ctx.windows_options.as_ref().and_then(|w| w.host_process),
            },
        );
        for (i, s) in ctx.sysctls.iter().flatten().enumerate() {
            if !SAFE_SYSCTLS.contains(&s.name.as_str()) {
                self.refuse(format!("{at}.sysctls[{i}].name"), "an unsafe sysctl");
            }
        }
        if self.restricted() && ctx.run_as_user == Some(0) {
            self.refuse(format!("{at}.runAsUser"), "running as root (uid 0)");
        }
    }

    /// The checks a pod's and a container's security context share.
    fn shared(&mut self, at: &str, c: Shared) {
        if let Some(s) = c.selinux {
            self.selinux(at, s.type_.as_deref(), s.user.is_some(), s.role.is_some());
        }
        if c.seccomp == Some("Unconfined") {
            self.refuse(
                format!("{at}.seccompProfile.type"),
                "an unconfined seccomp profile",
            );
        }
        if c.apparmor == Some("Unconfined") {
            self.refuse(
                format!("{at}.appArmorProfile.type"),
                "an unconfined AppArmor profile",
            );
        }
        if c.host_process == Some(true) {
            self.refuse(
                format!("{at}.windowsOptions.hostProcess"),
                "a Windows host process",
            );
        }
    }

    fn selinux(&mut self, at: &str, type_: Option<&str>, user: bool, role: bool) {
        if type_.is_some_and(|t| !t.is_empty() && !SELINUX_TYPES.contains(&t)) {
            self.refuse(format!("{at}.seLinuxOptions.type"), "a custom SELinux type");
        }
        if user {
            self.refuse(format!("{at}.seLinuxOptions.user"), "a custom SELinux user");
        }
        if role {
            self.refuse(format!("{at}.seLinuxOptions.role"), "a custom SELinux role");
        }
    }

    fn container(
        &mut self,
        at: &str,
        ctx: Option<&SecurityContext>,
        pod: Option<&PodSecurityContext>,
    ) {
        let sc = format!("{at}.securityContext");
        if let Some(ctx) = ctx {
            if ctx.privileged == Some(true) {
                self.refuse(format!("{sc}.privileged"), "a privileged container");
            }
            if ctx.proc_mount.as_deref().is_some_and(|p| p != "Default") {
                self.refuse(format!("{sc}.procMount"), "an unmasked /proc");
            }
            self.shared(
                &sc,
                Shared {
                    selinux: ctx.se_linux_options.as_ref(),
                    seccomp: ctx.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
                    apparmor: ctx.app_armor_profile.as_ref().map(|a| a.type_.as_str()),
                    host_process: ctx.windows_options.as_ref().and_then(|w| w.host_process),
                },
            );
            self.capabilities(&sc, ctx.capabilities.as_ref());
        } else if self.restricted() {
            self.capabilities(&sc, None);
        }
        if self.restricted() {
            self.restricted_container(&sc, ctx, pod);
        }
    }

    fn capabilities(&mut self, sc: &str, caps: Option<&Capabilities>) {
        for (i, cap) in caps
            .and_then(|c| c.add.as_ref())
            .into_iter()
            .flatten()
            .enumerate()
        {
            let name = cap.trim_start_matches("CAP_");
            let ok = if self.restricted() {
                name == "NET_BIND_SERVICE"
            } else {
                BASELINE_CAPABILITIES.contains(&name)
            };
            if !ok {
                self.refuse(
                    format!("{sc}.capabilities.add[{i}]"),
                    &format!("adding capability {cap}"),
                );
            }
        }
        if self.restricted()
            && !caps
                .and_then(|c| c.drop.as_ref())
                .is_some_and(|d| d.iter().any(|x| x == "ALL"))
        {
            self.refuse(
                format!("{sc}.capabilities.drop"),
                "keeping capabilities (drop ALL)",
            );
        }
    }

    fn restricted_container(
        &mut self,
        sc: &str,
        ctx: Option<&SecurityContext>,
        pod: Option<&PodSecurityContext>,
    ) {
        if ctx.and_then(|c| c.allow_privilege_escalation) != Some(false) {
            self.refuse(
                format!("{sc}.allowPrivilegeEscalation"),
                "privilege escalation (set it to false)",
            );
        }
        let non_root = ctx
            .and_then(|c| c.run_as_non_root)
            .or(pod.and_then(|p| p.run_as_non_root));
        if non_root != Some(true) {
            self.refuse(
                format!("{sc}.runAsNonRoot"),
                "running as root (set runAsNonRoot: true)",
            );
        }
        if ctx.and_then(|c| c.run_as_user) == Some(0) {
            self.refuse(format!("{sc}.runAsUser"), "running as root (uid 0)");
        }
        let seccomp = ctx
            .and_then(|c| c.seccomp_profile.as_ref())
            .or(pod.and_then(|p| p.seccomp_profile.as_ref()))
            .map(|s| s.type_.as_str());
        if !matches!(seccomp, Some("RuntimeDefault" | "Localhost")) {
            self.refuse(
                format!("{sc}.seccompProfile.type"),
                "no seccomp profile (set RuntimeDefault)",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template(spec: serde_json::Value) -> PodTemplateSpec {
        serde_json::from_value(json!({ "spec": spec })).unwrap()
    }

    fn fields(t: &PodTemplateSpec, level: PodSecurityLevel) -> Vec<String> {
        check_template(t, level, &[])
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn only_the_default_or_a_listed_service_account_runs_the_pods() {
        let as_sa = |name: &str| {
            template(json!({"serviceAccountName": name,
                "containers": [{"name": "m", "image": "i"}]}))
        };
        let allowed = vec!["trainer".to_string()];
        for level in [PodSecurityLevel::Baseline, PodSecurityLevel::Restricted] {
            let e = check_template(&as_sa("zhisuan-api"), level, &allowed);
            let e = e
                .iter()
                .find(|e| e.field.ends_with("serviceAccountName"))
                .expect("refused");
            assert_eq!(e.field, "spec.template.spec.serviceAccountName");
            assert!(
                e.message.contains("\"zhisuan-api\"") && e.message.contains("spec.serviceAccounts")
            );
            for ok in ["default", "trainer"] {
                assert!(!check_template(&as_sa(ok), level, &allowed)
                    .iter()
                    .any(|e| e.field.contains("serviceAccount")));
            }
        }
        // The deprecated spelling is checked too; privileged tenants are trusted.
        let old = template(json!({"serviceAccount": "zhisuan-api",
            "containers": [{"name": "m", "image": "i"}]}));
        assert_eq!(
            fields(&old, PodSecurityLevel::Baseline),
            ["spec.template.spec.serviceAccount"]
        );
        assert!(fields(&as_sa("zhisuan-api"), PodSecurityLevel::Privileged).is_empty());
    }

    #[test]
    fn a_plain_gpu_pod_passes_baseline_and_a_hardened_one_restricted() {
        let plain = template(json!({"containers": [{"name": "m", "image": "i",
            "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}));
        assert!(fields(&plain, PodSecurityLevel::Baseline).is_empty());
        let hardened = template(json!({
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "m", "image": "i", "securityContext": {
                "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}],
            "volumes": [{"name": "d", "emptyDir": {}}]}));
        assert!(
            fields(&hardened, PodSecurityLevel::Restricted).is_empty(),
            "{:?}",
            fields(&hardened, PodSecurityLevel::Restricted)
        );
        // The plain pod is not hardened enough for restricted.
        let r = fields(&plain, PodSecurityLevel::Restricted);
        assert!(
            r.contains(
                &"spec.template.spec.containers[0].securityContext.runAsNonRoot".to_string()
            ),
            "{r:?}"
        );
    }

    #[test]
    fn baseline_refuses_each_escape_naming_its_field() {
        let t = template(json!({
            "hostNetwork": true, "hostPID": true,
            "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
            "securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]},
            "initContainers": [{"name": "i", "image": "i", "securityContext": {"privileged": true}}],
            "containers": [{"name": "m", "image": "i",
                "ports": [{"containerPort": 80, "hostPort": 80}],
                "securityContext": {"capabilities": {"add": ["SYS_ADMIN", "CHOWN"]},
                    "seccompProfile": {"type": "Unconfined"}, "procMount": "Unmasked"}}]}));
        let got = fields(&t, PodSecurityLevel::Baseline);
        for want in [
            "spec.template.spec.hostNetwork",
            "spec.template.spec.hostPID",
            "spec.template.spec.volumes[0].hostPath",
            "spec.template.spec.securityContext.sysctls[0].name",
            "spec.template.spec.initContainers[0].securityContext.privileged",
            "spec.template.spec.containers[0].ports[0].hostPort",
            "spec.template.spec.containers[0].securityContext.capabilities.add[0]",
            "spec.template.spec.containers[0].securityContext.seccompProfile.type",
            "spec.template.spec.containers[0].securityContext.procMount",
        ] {
            assert!(got.iter().any(|f| f == want), "missing {want}: {got:?}");
        }
        assert_eq!(got.len(), 9, "CHOWN is a default capability: {got:?}");
        let e = &check_template(&t, PodSecurityLevel::Baseline, &[])[0];
        assert!(
            e.message.contains("baseline") && e.message.contains("spec.podSecurity"),
            "{}",
            e.message
        );
        assert!(fields(&t, PodSecurityLevel::Privileged).is_empty());
    }

    #[test]
    fn levels_are_inherited_down_the_tenant_tree() {
        let q = |t: &str, p: Option<&str>, l| (t.to_string(), p.map(String::from), l);
        let levels = tenant_levels(&[
            q("gov", None, Some(PodSecurityLevel::Restricted)),
            q("gov-fj", Some("gov"), None),
            q("ops", None, Some(PodSecurityLevel::Privileged)),
            q("sme", None, None),
            // A parent cycle ends, at the default.
            q("a", Some("b"), None),
            q("b", Some("a"), None),
        ]);
        assert_eq!(levels["gov-fj"], PodSecurityLevel::Restricted);
        assert_eq!(levels["ops"], PodSecurityLevel::Privileged);
        assert_eq!(levels["sme"], PodSecurityLevel::Baseline);
        assert_eq!(levels["a"], PodSecurityLevel::Baseline);
    }
}
