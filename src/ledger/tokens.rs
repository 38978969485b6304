//! Token counting from vLLM-style cumulative counters, with counter resets
//! handled. Pure: the caller scrapes (see `zhisuan::telemetry::promtext`) and
//! feeds samples in; this turns successive samples into per-interval deltas.

use std::collections::HashMap;

/// Names of the cumulative counters to read (configurable per serving stack).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenCounterNames {
    pub prompt: String,
    pub completion: String,
}

impl Default for TokenCounterNames {
    fn default() -> Self {
        TokenCounterNames {
            prompt: "vllm:prompt_tokens_total".into(),
            completion: "vllm:generation_tokens_total".into(),
        }
    }
}

/// Increase of a cumulative counter from `prev` to `cur`. A drop means the
/// process restarted and the counter began again at zero, so the increase is
/// `cur` itself (Prometheus' `increase()` rule). Non-finite or negative
/// readings count as zero.
pub fn counter_delta(prev: Option<f64>, cur: f64) -> u64 {
    if !cur.is_finite() || cur < 0.0 {
        return 0;
    }
    match prev {
        Some(p) if p.is_finite() && p >= 0.0 && cur >= p => (cur - p).round() as u64,
        Some(_) => cur.round() as u64,
        None => 0,
    }
}

/// Prompt and completion tokens counted over one interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenDelta {
    pub prompt: u64,
    pub completion: u64,
}

/// Remembers the last value of each counter series per source (pod) and
/// turns each scrape into a delta. The first scrape of a series only sets
/// its baseline (its tokens were counted by whoever saw the previous value).
#[derive(Debug, Default)]
pub struct TokenMeter {
    names: TokenCounterNames,
    last: HashMap<(String, String), f64>,
}

impl TokenMeter {
    pub fn new(names: TokenCounterNames) -> Self {
        TokenMeter {
            names,
            last: HashMap::new(),
        }
    }

    /// Feeds one scrape of `source`: `samples` are (metric name, label set
    /// rendered as a stable string, value). Series of other metrics are
    /// ignored; several series of one counter (e.g. per model) are summed
    /// after each one's own reset handling.
    pub fn observe<'a>(
        &mut self,
        source: &str,
        samples: impl IntoIterator<Item = (&'a str, &'a str, f64)>,
    ) -> TokenDelta {
        let mut delta = TokenDelta::default();
        for (name, labels, value) in samples {
            let slot = if name == self.names.prompt {
                &mut delta.prompt
            } else if name == self.names.completion {
                &mut delta.completion
            } else {
                continue;
            };
            let key = (source.to_string(), format!("{name}{labels}"));
            let prev = self.last.insert(key, value);
            *slot += counter_delta(prev, value);
        }
        delta
    }

    /// Forgets a source (its pod is gone).
    pub fn forget(&mut self, source: &str) {
        self.last.retain(|(s, _), _| s != source);
    }

    /// Forgets every source not in `live` (pods that are gone).
    pub fn retain_sources(&mut self, live: &[&str]) {
        self.last.retain(|(s, _), _| live.contains(&s.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_handles_resets() {
        assert_eq!(counter_delta(None, 500.0), 0);
        assert_eq!(counter_delta(Some(100.0), 250.0), 150);
        assert_eq!(counter_delta(Some(250.0), 40.0), 40); // restarted
        assert_eq!(counter_delta(Some(40.0), f64::NAN), 0);
    }

    #[test]
    fn meter_tracks_series_per_source_and_sums() {
        let mut m = TokenMeter::new(TokenCounterNames::default());
        let p = "vllm:prompt_tokens_total";
        let g = "vllm:generation_tokens_total";
        let d = m.observe(
            "pod-a",
            [(p, "{model=\"q\"}", 100.0), (g, "{model=\"q\"}", 10.0)],
        );
        assert_eq!(d, TokenDelta::default());
        let d = m.observe(
            "pod-a",
            [
                (p, "{model=\"q\"}", 160.0),
                (g, "{model=\"q\"}", 30.0),
                ("other", "", 9.0),
            ],
        );
        assert_eq!(
            d,
            TokenDelta {
                prompt: 60,
                completion: 20
            }
        );
        // pod restarted: counters start again
        let d = m.observe(
            "pod-a",
            [(p, "{model=\"q\"}", 5.0), (g, "{model=\"q\"}", 2.0)],
        );
        assert_eq!(
            d,
            TokenDelta {
                prompt: 5,
                completion: 2
            }
        );
        // another source is independent
        let d = m.observe("pod-b", [(p, "{model=\"q\"}", 7.0)]);
        assert_eq!(d.prompt, 0);
    }

    #[test]
    fn names_are_configurable() {
        let mut m = TokenMeter::new(TokenCounterNames {
            prompt: "sglang:prompt_tokens_total".into(),
            completion: "sglang:generation_tokens_total".into(),
        });
        m.observe("p", [("sglang:prompt_tokens_total", "", 1.0)]);
        let d = m.observe(
            "p",
            [
                ("sglang:prompt_tokens_total", "", 11.0),
                ("vllm:prompt_tokens_total", "", 99.0),
            ],
        );
        assert_eq!(d.prompt, 10);
    }
}
