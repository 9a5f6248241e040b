//! The scenario file as written, before checks: the shapes serde reads it into, with spans.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScenario {
    pub(super) description: Option<String>,
    pub(super) until: Option<Spanned<Nanos>>,
    pub(super) crash_policy: Option<Spanned<String>>,
    pub(super) clock_spread: Option<Nanos>,
    pub(super) start_spread: Option<Nanos>,
    pub(super) chaos: Option<Probability>,
    #[serde(default)]
    pub(super) aslr: bool,
    #[serde(default)]
    pub(super) network: RawNetwork,
    #[serde(default)]
    pub(super) machine: Vec<Spanned<RawMachine>>,
    #[serde(default)]
    pub(super) timeline: Vec<Spanned<RawEvent>>,
    pub(super) nemesis: Option<Spanned<RawNemesis>>,
    pub(super) check: Option<RawCheck>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCheck {
    pub(super) history: Spanned<String>,
    pub(super) model: Option<Spanned<String>>,
    pub(super) timeout: Option<Spanned<Nanos>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNemesis {
    pub(super) faults: Spanned<Vec<Spanned<String>>>,
    pub(super) interval: Option<Spanned<Nanos>>,
    pub(super) duration: Option<Spanned<Nanos>>,
    pub(super) quiet: Option<Nanos>,
    pub(super) start: Option<Nanos>,
    pub(super) machines: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNetwork {
    pub(super) latency: Option<Nanos>,
    pub(super) jitter: Option<Nanos>,
    pub(super) loss: Option<Probability>,
    pub(super) duplicate: Option<Probability>,
    pub(super) bandwidth: Option<Bandwidth>,
    pub(super) reorder: Option<bool>,
    #[serde(default)]
    pub(super) link: Vec<Spanned<RawLink>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLink {
    pub(super) from: Option<Spanned<String>>,
    pub(super) to: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) both: bool,
    pub(super) latency: Option<Nanos>,
    pub(super) jitter: Option<Nanos>,
    pub(super) loss: Option<Probability>,
    pub(super) duplicate: Option<Probability>,
    pub(super) bandwidth: Option<Bandwidth>,
    pub(super) reorder: Option<bool>,
    pub(super) up: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMachine {
    pub(super) name: Option<Spanned<String>>,
    pub(super) count: Option<Spanned<i64>>,
    pub(super) command: Spanned<Command>,
    pub(super) recipe: Option<String>,
    pub(super) memory: Option<Spanned<ByteSize>>,
    #[serde(default)]
    pub(super) env: BTreeMap<String, Spanned<String>>,
    pub(super) expect: Option<Spanned<Expect>>,
    #[serde(default)]
    pub(super) disks: Vec<Spanned<RawDisk>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDisk {
    pub(super) size: Option<ByteSize>,
    pub(super) dir: Option<String>,
    pub(super) image: Option<String>,
    pub(super) recipe: Option<Spanned<String>>,
    pub(super) fs: Option<Spanned<String>>,
    pub(super) mount: Option<Spanned<String>>,
    pub(super) latency: Option<Nanos>,
    pub(super) latency_mean: Option<Nanos>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEvent {
    pub(super) at: Spanned<Nanos>,
    pub(super) partition: Option<Spanned<Vec<Vec<Spanned<String>>>>>,
    pub(super) one_way: Option<Spanned<bool>>,
    pub(super) name: Option<Spanned<String>>,
    pub(super) heal: Option<Spanned<String>>,
    pub(super) link: Option<Spanned<RawLink>>,
    pub(super) kill: Option<Spanned<String>>,
    pub(super) policy: Option<Spanned<String>>,
    pub(super) restart: Option<Spanned<String>>,
    pub(super) pause: Option<Spanned<String>>,
    #[serde(rename = "for")]
    pub(super) pause_for: Option<Spanned<Nanos>>,
    pub(super) resume: Option<Spanned<String>>,
    pub(super) clock: Option<Spanned<String>>,
    pub(super) rate: Option<Spanned<String>>,
    pub(super) step: Option<Spanned<String>>,
    pub(super) offset: Option<Spanned<String>>,
    pub(super) disk: Option<Spanned<String>>,
    pub(super) latent_errors: Option<Spanned<String>>,
    pub(super) write_errors: Option<Spanned<String>>,
    pub(super) stall: Option<Spanned<Nanos>>,
    pub(super) slow: Option<Spanned<Nanos>>,
    pub(super) clear: Option<Spanned<bool>>,
}
