//! ModelsLab's jobs: every request gets an id whose answer `fetch` returns later;
//! a request with a `webhook`, or one that would wait long at the inference server,
//! is answered "processing" at once and runs after the reply. A job's record lives
//! in Spin's key-value store (SQLite locally, Redis/Valkey in production), never only
//! in memory, so a restarted edge still answers for it, and whichever instance next
//! sees it unfinished with its lease run out takes it over. This file holds the
//! record and its rules; `component/jobs.rs` does the I/O.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::stash::TTL_SECS;

/// Job records: `job/<id>`; the init image of a job still to run: `jobin/<id>`; a
/// job that still needs work (running, or a webhook owed): `jobrun/<id>`, so that
/// the key list alone says which records to look at.
const RECORD_PREFIX: &str = "job/";
const INPUT_PREFIX: &str = "jobin/";
const RUN_PREFIX: &str = "jobrun/";
/// Bits of an id below its creation time.
const RANDOM_BITS: u32 = 20;
/// A running job's owner renews its lease this often; a job whose lease has run out
/// for LEASE_SECS is taken over (its owner stopped: a restart, a crash).
pub const HEARTBEAT_SECS: u64 = 5;
pub const LEASE_SECS: u64 = 20;
/// How often a job is started before it is reported failed (a job that keeps
/// killing its runner must not run forever).
pub const MAX_ATTEMPTS: u32 = 3;
/// Webhook retries: the first after 1 s, doubling to at most this.
const WEBHOOK_MAX_BACKOFF_SECS: u64 = 60;

/// Ids are integers, as ModelsLab's are, below 2^53 so that JavaScript reads them
/// exactly: the creation time (Unix seconds) above 20 random bits, so that a job's
/// keys can be swept when it expires from the key list alone.
pub fn new_id(now: u64, random: u64) -> u64 {
    ((now << RANDOM_BITS) | (random & ((1 << RANDOM_BITS) - 1))).max(1) & ((1 << 53) - 1)
}

/// When the job `id` and everything it stored expire.
pub fn expires(id: u64) -> u64 {
    (id >> RANDOM_BITS) + TTL_SECS
}

pub fn record_key(id: u64) -> String {
    format!("{RECORD_PREFIX}{id}")
}

pub fn input_key(id: u64) -> String {
    format!("{INPUT_PREFIX}{id}")
}

pub fn run_key(id: u64) -> String {
    format!("{RUN_PREFIX}{id}")
}

/// The ids of jobs that still need work, from the store's key list.
pub fn needing_work(keys: &[String]) -> impl Iterator<Item = u64> + '_ {
    keys.iter()
        .filter_map(|k| k.strip_prefix(RUN_PREFIX).and_then(parse_id))
}

/// The keys of expired jobs among `keys`.
pub fn expired(keys: &[String], now: u64) -> impl Iterator<Item = &String> {
    keys.iter().filter(move |k| {
        [RECORD_PREFIX, INPUT_PREFIX, RUN_PREFIX]
            .iter()
            .find_map(|p| k.strip_prefix(p).and_then(parse_id))
            .is_some_and(|id| expires(id) <= now)
    })
}

/// The id a fetch path names, if it is one.
pub fn parse_id(text: &str) -> Option<u64> {
    text.trim().parse().ok().filter(|&id| id > 0)
}

/// Whose job it is, without keeping the key itself in the store.
pub fn key_digest(key: Option<&str>) -> String {
    let digest = Sha256::digest(key.unwrap_or_default().as_bytes());
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Processing,
    Done,
}

/// A webhook still owed a delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Webhook {
    pub url: String,
    pub delivered: bool,
    pub attempts: u32,
    /// Unix seconds: the next try, and the last.
    pub next_at: u64,
    pub give_up_at: u64,
    pub last_error: Option<String>,
}

impl Webhook {
    pub fn new(url: String, now: u64, retry_secs: u64) -> Webhook {
        Webhook {
            url,
            delivered: false,
            attempts: 0,
            next_at: now,
            give_up_at: now + retry_secs,
            last_error: None,
        }
    }

    /// Records a failed try and schedules the next; false once it is time to give up.
    pub fn failed(&mut self, now: u64, error: String) -> bool {
        self.attempts += 1;
        self.last_error = Some(error);
        let backoff = (1u64 << self.attempts.min(16)).min(WEBHOOK_MAX_BACKOFF_SECS);
        self.next_at = now + backoff;
        self.next_at <= self.give_up_at
    }

    pub fn pending(&self, now: u64) -> bool {
        !self.delivered && now <= self.give_up_at
    }
}

/// The trace id a job's runs carry to the inference server, by which its
/// progress is asked.
pub fn run_trace(id: u64) -> String {
    format!("job-{id}")
}

/// One job, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id: u64,
    pub owner: String,
    pub created: u64,
    /// When the record, its input and its images go (24 hours, like ModelsLab's links).
    pub expires: u64,
    pub state: State,
    /// While processing: until when its runner holds it.
    pub lease_until: u64,
    pub attempts: u32,
    /// What to run: the contract request (an init image's bytes are under `input_key`).
    pub request: contract::GenerateRequest,
    /// The dialect's echo (what it renders the answer from).
    pub echo: Value,
    /// The names the images will be stored under (their links are `future_links`).
    pub image_names: Vec<String>,
    /// Seconds the job was expected to take when it was accepted.
    pub eta_secs: f64,
    /// The answer once done: its HTTP status and body.
    pub status: u16,
    pub answer: Value,
    pub webhook: Option<Webhook>,
}

impl Record {
    pub fn new(id: u64, owner: String, now: u64, request: contract::GenerateRequest) -> Record {
        Record {
            id,
            owner,
            created: now,
            expires: expires(id),
            state: State::Processing,
            lease_until: 0,
            attempts: 0,
            request,
            echo: Value::Null,
            image_names: Vec::new(),
            eta_secs: 0.0,
            status: 0,
            answer: Value::Null,
            webhook: None,
        }
    }

    /// Whether the job still needs work: a run, or a webhook delivery.
    pub fn needs_work(&self, now: u64) -> bool {
        self.state == State::Processing || self.webhook.as_ref().is_some_and(|w| w.pending(now))
    }

    /// Whether a runner may take the job now: work left, and nobody's lease holds.
    pub fn claimable(&self, now: u64) -> bool {
        self.needs_work(now) && self.lease_until <= now
    }

    /// Takes the job (its run, or its webhook) for LEASE_SECS; `false` when its run
    /// has been started too often, and it is then finished as failed.
    pub fn claim(&mut self, now: u64) -> bool {
        self.lease_until = now + LEASE_SECS;
        if self.state == State::Done {
            return true;
        }
        if self.attempts >= MAX_ATTEMPTS {
            self.finish(
                500,
                serde_json::json!({
                    "status": "error",
                    "message": format!(
                        "the job stopped {} times before it finished; it is not retried again",
                        self.attempts
                    ),
                }),
            );
            return false;
        }
        self.attempts += 1;
        true
    }

    /// The answer is in. The lease stays with the runner, which delivers the webhook.
    pub fn finish(&mut self, status: u16, answer: Value) {
        self.state = State::Done;
        self.status = status;
        self.answer = answer;
    }

    /// Seconds still expected, for "processing" answers (at least 1).
    pub fn eta_left(&self, now: u64) -> f64 {
        let spent = now.saturating_sub(self.created) as f64;
        (self.eta_secs - spent).max(1.0).round()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> contract::GenerateRequest {
        serde_json::from_str(r#"{"model":"m","prompt":"p","samples":1,"seed":1}"#).unwrap()
    }

    #[test]
    fn leases_are_taken_over_once_they_run_out_and_attempts_are_capped() {
        let mut r = Record::new(new_id(100, 7), key_digest(Some("k")), 100, request());
        assert_eq!(r.expires, 100 + TTL_SECS);
        assert!(r.claimable(100));
        assert!(r.claim(100));
        assert!(!r.claimable(100 + LEASE_SECS - 1), "its runner holds it");
        assert!(r.claimable(100 + LEASE_SECS), "its runner stopped renewing");
        assert!(r.claim(200) && r.claim(300));
        assert!(!r.claim(400), "a fourth start is refused");
        assert_eq!((r.state, r.status), (State::Done, 500));
        assert!(!r.claimable(1000));
        // Done, with a webhook still owed: claimable for its delivery only.
        r.webhook = Some(Webhook::new("http://h/".into(), 1000, 60));
        assert!(r.claimable(1000) && r.claim(1000) && !r.claimable(1001));
        let back: Record = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn webhooks_back_off_until_they_give_up() {
        let mut w = Webhook::new("http://h/x".into(), 0, 300);
        assert!(w.pending(0));
        let mut waits = Vec::new();
        let mut now = 0;
        while w.failed(now, "down".into()) {
            waits.push(w.next_at - now);
            now = w.next_at;
        }
        assert_eq!(&waits[..6], &[2, 4, 8, 16, 32, 60]);
        assert!(!w.pending(now + 300));
    }

    #[test]
    fn ids_and_owners() {
        assert_eq!(new_id(0, 0), 1);
        let id = new_id(1_800_000_000, u64::MAX);
        assert!(id < 1 << 53);
        assert_eq!(expires(id), 1_800_000_000 + TTL_SECS);
        let keys: Vec<String> = vec![record_key(id), input_key(id), run_key(id), "img/x".into()];
        assert_eq!(expired(&keys, expires(id)).count(), 3);
        assert_eq!(expired(&keys, expires(id) - 1).count(), 0);
        assert_eq!(needing_work(&keys).collect::<Vec<_>>(), vec![id]);
        assert_eq!(parse_id(" 42"), Some(42));
        assert_eq!(parse_id("x"), None);
        assert_eq!(parse_id("0"), None);
        assert_ne!(key_digest(Some("a")), key_digest(Some("b")));
        assert_eq!(key_digest(Some("a")).len(), 32);
    }
}
