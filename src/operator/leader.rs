//! Leader election on a `coordination.k8s.io/v1` Lease.
//!
//! Safety rests on two clocks that never disagree in the wrong direction:
//! - the holder counts its term from the moment it SENT the renewal and stops
//!   acting after `renew_deadline` (< `lease_duration`) unless renewed again;
//! - a candidate takes over only after it has seen the same holder and
//!   renewTime unchanged — or the Lease missing (deleted under its holder) —
//!   for a full `lease_duration` on its own clock.
//!
//! Every write to the Lease carries its resourceVersion, so of two candidates
//! racing for an expired Lease exactly one wins (the other gets 409).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};

/// Timing of the election.
#[derive(Clone, Debug)]
pub struct LeaseTiming {
    /// How long a Lease stays valid without renewal (what other candidates wait).
    pub lease_duration: Duration,
    /// The holder stops acting this long after its last renewal was sent.
    pub renew_deadline: Duration,
    /// How often the holder renews and candidates retry.
    pub retry_period: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        LeaseTiming {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Whether this replica may act now. Cheap to check before every write.
#[derive(Clone, Default)]
pub struct Leadership {
    /// Leading until this instant (None = not leading).
    until: Arc<Mutex<Option<Instant>>>,
    /// Set once the holder has given up (shutdown): never lead again.
    stopped: Arc<AtomicBool>,
}

impl Leadership {
    pub fn is_leader(&self) -> bool {
        !self.stopped.load(Ordering::SeqCst)
            && self
                .until
                .lock()
                .unwrap()
                .is_some_and(|t| Instant::now() < t)
    }

    fn extend(&self, until: Instant) {
        *self.until.lock().unwrap() = Some(until);
    }

    fn lose(&self) {
        *self.until.lock().unwrap() = None;
    }
}

/// Runs the election for one candidate.
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: LeaseTiming,
    leadership: Leadership,
    /// (holder, renewTime) last seen and when this candidate first saw it.
    observed: Option<(String, String, Instant)>,
}

/// The renewTime recorded for a Lease that does not exist.
const MISSING: &str = "<missing>";

fn micro_now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

impl Elector {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, timing: LeaseTiming) -> Self {
        Elector {
            api,
            name: name.into(),
            identity: identity.into(),
            timing,
            leadership: Leadership::default(),
            observed: None,
        }
    }

    pub fn leadership(&self) -> Leadership {
        self.leadership.clone()
    }

    fn spec(&self, transitions: i32, acquire: Option<MicroTime>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.timing.lease_duration.as_secs().max(1) as i32),
            acquire_time: acquire.or_else(|| Some(micro_now())),
            renew_time: Some(micro_now()),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// One round: acquire, renew or observe. Returns whether this candidate leads.
    pub async fn step(&mut self) -> bool {
        let sent = Instant::now();
        match self.try_step(sent).await {
            Ok(true) => {
                self.leadership.extend(sent + self.timing.renew_deadline);
                true
            }
            Ok(false) => {
                self.leadership.lose();
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, lease = %self.name, "lease round failed");
                // Keep the current term; it lapses by itself at its deadline.
                self.leadership.is_leader()
            }
        }
    }

    async fn try_step(&mut self, now: Instant) -> Result<bool, kube::Error> {
        let Some(current) = self.api.get_opt(&self.name).await? else {
            // A missing Lease may have been deleted under a holder that still
            // acts until its term ends: only the holder itself re-creates it
            // at once; anyone else waits a full lease_duration of seeing it
            // missing (longer than any holder's renew_deadline).
            if !self.leadership.is_leader() && !self.waited_out(String::new(), MISSING.into(), now)
            {
                return Ok(false);
            }
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(0, None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => {
                    self.observed = None;
                    Ok(true)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let renew = spec
            .renew_time
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default();
        let transitions = spec.lease_transitions.unwrap_or(0);
        let mine = holder == self.identity;
        // Expired only after a full lease_duration of no change, on our clock.
        if !mine && !holder.is_empty() && !self.waited_out(holder, renew, now) {
            return Ok(false);
        }
        let mut lease = current.clone();
        lease.spec = Some(if mine {
            self.spec(transitions, spec.acquire_time.clone())
        } else {
            self.spec(transitions + 1, None)
        });
        // `current` carries its resourceVersion: a racing write gets 409.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                self.observed = None;
                Ok(true)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether this candidate has seen the Lease in the same state (holder
    /// and renewTime, or missing) for a full `lease_duration` by `now`.
    fn waited_out(&mut self, holder: String, renew: String, now: Instant) -> bool {
        let since = match &self.observed {
            Some((h, r, since)) if *h == holder && *r == renew => *since,
            _ => {
                self.observed = Some((holder, renew, now));
                now
            }
        };
        now.duration_since(since) >= self.timing.lease_duration
    }

    /// Campaigns and renews until `shutdown` fires; on shutdown a holder
    /// clears the Lease so a successor need not wait for it to expire.
    pub async fn run(mut self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            self.step().await;
            tokio::select! {
                _ = tokio::time::sleep(self.timing.retry_period) => {}
                _ = shutdown.changed() => break,
            }
        }
        let was_leader = self.leadership.is_leader();
        self.leadership.stopped.store(true, Ordering::SeqCst);
        self.leadership.lose();
        if was_leader {
            if let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await {
                if let Some(spec) = lease.spec.as_mut() {
                    if spec.holder_identity.as_deref() == Some(self.identity.as_str()) {
                        spec.holder_identity = None;
                        let _ = self
                            .api
                            .replace(&self.name, &PostParams::default(), &lease)
                            .await;
                    }
                }
            }
        }
    }
}
