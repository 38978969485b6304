//! `zhisuan admin-key`: makes the quota API's admin-key Secret once — the
//! chart runs it as a pre-install / pre-upgrade hook — and never replaces a
//! key that exists, so `helm template`, GitOps renders and upgrades never
//! change the admin key (issue #16, item 13). The key is never printed.

use anyhow::Context;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::json;

use crate::error::InputError;

#[derive(clap::Args, Debug, Clone)]
pub struct AdminKeyArgs {
    /// Namespace of the Secret (in a pod: its own).
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: String,
    /// Name of the Secret.
    #[arg(long)]
    pub secret: String,
    /// The data key holding the admin key; repeat for more keys in the same
    /// Secret (the chart also makes the scrape key `metrics-key`).
    #[arg(long, default_value = "admin-key")]
    pub key: Vec<String>,
}

/// What [`ensure`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A new Secret with a new key.
    Created,
    /// The Secret existed without the key: the key was added.
    Added,
    /// The key existed and was left alone.
    Kept,
}

/// Length of a generated key (alphanumeric, ~285 bits).
const KEY_LEN: usize = 48;

/// A new random alphanumeric key.
pub fn random_key() -> anyhow::Result<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(KEY_LEN);
    let mut buf = [0u8; 64];
    while out.len() < KEY_LEN {
        getrandom::fill(&mut buf).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        // Rejection sampling: 248 = 4 × 62 keeps every character equally likely.
        for b in buf.iter().filter(|b| **b < 248) {
            if out.len() == KEY_LEN {
                break;
            }
            out.push(ALPHABET[(*b % 62) as usize] as char);
        }
    }
    Ok(out)
}

/// Makes sure Secret `name` in `namespace` holds a non-empty `key`.
pub async fn ensure(
    client: &Client,
    namespace: &str,
    name: &str,
    key: &str,
) -> anyhow::Result<Outcome> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let has_key = |s: &Secret| {
        s.data
            .as_ref()
            .and_then(|d| d.get(key))
            .is_some_and(|v| !v.0.is_empty())
            || s.string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .is_some_and(|v| !v.is_empty())
    };
    if let Some(existing) = api.get_opt(name).await.context("reading the Secret")? {
        if has_key(&existing) {
            return Ok(Outcome::Kept);
        }
        let patch = json!({"data": {key: ByteString(random_key()?.into_bytes())}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .context("adding the key to the Secret")?;
        return Ok(Outcome::Added);
    }
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": {"app.kubernetes.io/managed-by": "zhisuan-admin-key"},
        },
        "type": "Opaque",
        "data": {key: ByteString(random_key()?.into_bytes())},
    }))?;
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(Outcome::Created),
        // Another run made it first: theirs stands.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Outcome::Kept),
        Err(e) => Err(e).context("creating the Secret"),
    }
}

pub fn run(args: AdminKeyArgs) -> anyhow::Result<()> {
    let flags = [("--namespace", &args.namespace), ("--secret", &args.secret)];
    for (flag, v) in flags
        .into_iter()
        .chain(args.key.iter().map(|k| ("--key", k)))
    {
        if v.trim().is_empty() {
            return Err(InputError::new(format!("{flag}: must not be empty")).into());
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start tokio runtime")?;
    rt.block_on(async {
        let client = Client::try_default()
            .await
            .context("connecting to the Kubernetes API (run in a cluster or set KUBECONFIG)")?;
        for key in &args.key {
            let what = match ensure(&client, &args.namespace, &args.secret, key).await? {
                Outcome::Created => "created with a new",
                Outcome::Added => "given a new",
                Outcome::Kept => "already holds its; left unchanged:",
            };
            println!("Secret {}/{} {what} key {key}", args.namespace, args.secret);
        }
        anyhow::Ok(())
    })
}
