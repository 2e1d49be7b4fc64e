//! ModelsLab's jobs in Spin's key-value store (the rules are in `crate::jobs`):
//! submitting (run now, or after a "processing" reply), running with a lease kept
//! alive by a heartbeat, taking over jobs whose runner stopped, fetching, webhooks.

use std::pin::pin;
use std::time::Duration;

use futures_util::future::{Either, select};
use serde_json::Value;
use spin_sdk::key_value::Store;
use url::Url;

use super::{kv_error, outbound, store, unix_now};
use crate::api_error::ApiError;
use crate::dialects::{Dialect, Outgoing, modelslab};
use crate::job::Job;
use crate::jobs::{self, HEARTBEAT_SECS, LEASE_SECS, Record, State, Webhook};
use crate::quota::{self, Usage};
use crate::settings::Settings;
use crate::stash::{self, Stash};
use contract::wire::Images;

async fn open() -> Result<Store, ApiError> {
    Store::open(stash::STORE)
        .await
        .map_err(|e| kv_error("opening", e))
}

async fn load(kv: &Store, id: u64) -> Result<Option<Record>, ApiError> {
    let Some(bytes) = kv
        .get(&jobs::record_key(id))
        .await
        .map_err(|e| kv_error("reading from", e))?
    else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ApiError::internal(format!("job {id}: its stored record is unreadable ({e})")))
}

async fn save(kv: &Store, record: &Record) -> Result<(), ApiError> {
    let bytes = serde_json::to_vec(record).expect("a record serializes");
    kv.set(&jobs::record_key(record.id), &bytes)
        .await
        .map_err(|e| kv_error("writing to", e))
}

async fn load_usage(kv: &Store, owner: &str) -> Result<Usage, ApiError> {
    let bytes = kv
        .get(&quota::key(owner))
        .await
        .map_err(|e| kv_error("reading from", e))?;
    // An unreadable ledger (from an older version) starts afresh.
    Ok(bytes
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default())
}

async fn save_usage(kv: &Store, owner: &str, usage: &Usage) -> Result<(), ApiError> {
    let bytes = serde_json::to_vec(usage).expect("a ledger serializes");
    kv.set(&quota::key(owner), &bytes)
        .await
        .map_err(|e| kv_error("writing to", e))
}

/// A finished job keeps what it stored: its images and its answer.
async fn settle(kv: &Store, record: &Record, image_bytes: u64) -> Result<(), ApiError> {
    let mut usage = load_usage(kv, &record.owner).await?;
    let answer = serde_json::to_vec(&record.answer).map_or(0, |a| a.len() as u64);
    let images = if image_bytes > 0 {
        record.image_names.len() as u32
    } else {
        0
    };
    usage.settle(record.id, image_bytes + answer, images);
    save_usage(kv, &record.owner, &usage).await
}

fn random_u64() -> Result<u64, ApiError> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| ApiError::internal(format!("no randomness: {e}")))?;
    Ok(u64::from_le_bytes(b))
}

/// The parts of a job's answer a webhook and fetch repeat: its id and track_id.
fn answer_of(out: &Outgoing, record: &Record) -> Value {
    let mut body: Value = serde_json::from_slice(&out.body).unwrap_or(Value::Null);
    if let Some(obj) = body.as_object_mut() {
        obj.entry("id").or_insert(record.id.into());
        if !record.echo["track_id"].is_null() {
            obj.insert("track_id".into(), record.echo["track_id"].clone());
        }
    }
    body
}

fn job_of(record: &Record) -> Job {
    let mut job = Job::new(record.request.clone(), None);
    job.echo = record.echo.clone();
    job
}

fn future_links(record: &Record, origin: &str) -> Vec<String> {
    let stash = Stash::new(origin, record.created);
    record.image_names.iter().map(|n| stash.link(n)).collect()
}

/// A ModelsLab request, parsed and with its input image: answered now, or (with a
/// webhook, or a long expected wait) "processing" now and run after the reply.
#[allow(clippy::too_many_arguments)]
pub async fn submit(
    dialect: &'static dyn Dialect,
    mut job: Job,
    images: Images,
    key: Option<&str>,
    origin: &str,
    path: &str,
    settings: &Settings,
    trace_id: &str,
) -> Result<Outgoing, ApiError> {
    let now = unix_now();
    let id = jobs::new_id(now, random_u64()?);
    job.echo["id"] = id.into();
    let webhook = modelslab::webhook(&job).map(String::from);
    if let Some(url) = &webhook {
        let parsed =
            Url::parse(url).map_err(|e| ApiError::field("webhook", format!("not a URL ({e})")))?;
        settings.image_hosts.check(&parsed, "webhook")?;
    }
    let eta = outbound::expected_wait(settings, &job.request.model)
        .await
        .map_err(|e| e.in_field_names(dialect.field_names()))?;
    let later = webhook.is_some() || eta.is_some_and(|e| e > settings.async_after.as_secs_f64());
    let mut record = Record::new(id, jobs::key_digest(key), now, job.request.clone());
    record.echo = job.echo.clone();
    record.eta_secs = eta.unwrap_or(0.0);
    record.image_names = (0..job.request.samples)
        .map(|_| stash::new_name(now))
        .collect::<Result<_, _>>()?;
    record.webhook = webhook.map(|url| Webhook::new(url, now, settings.webhook_retry.as_secs()));
    let kv = open().await?;
    maintain(&kv, dialect, settings, origin).await;
    // Room in this key's share of the store, before anything runs.
    let mut usage = load_usage(&kv, &record.owner).await?;
    let base64 = job.echo["base64"].as_bool().unwrap_or(false);
    let reserve = quota::Entry {
        id,
        expires: record.expires,
        bytes: quota::worst_case_bytes(
            job.request.width,
            job.request.height,
            job.request.samples,
            base64,
        ),
        images: job.request.samples,
    };
    usage.admit(now, reserve, settings.key_limits)?;
    save_usage(&kv, &record.owner, &usage).await?;

    if later {
        if !images.is_empty() {
            kv.set(&jobs::input_key(id), &keep_images(&images)?)
                .await
                .map_err(|e| kv_error("writing to", e))?;
        }
        kv.set(&jobs::run_key(id), b"")
            .await
            .map_err(|e| kv_error("writing to", e))?;
        save(&kv, &record).await?;
        spin_sdk::wasip3::spawn(drive(dialect, settings.clone(), id, origin.to_string()));
        let fetch_url = format!("{origin}{}", modelslab::fetch_path(path, id));
        return Ok(modelslab::render_processing(
            &job,
            id,
            record.eta_left(now),
            &fetch_url,
            &future_links(&record, origin),
        ));
    }
    record.claim(now);
    let result = run(dialect, &record, &images, origin, settings, trace_id).await;
    let (out, stored) = match &result {
        Ok((out, stored)) => (out.clone(), *stored),
        Err(err) => (dialect.render_error(err, trace_id), 0),
    };
    record.finish(out.status, answer_of(&out, &record));
    record.lease_until = 0;
    save(&kv, &record).await?;
    settle(&kv, &record, stored).await?;
    result.map(|(out, _)| out)
}

/// Generates a job's images and renders its answer (the images stored under the
/// names its links were given); also says how many bytes of images it stored.
async fn run(
    dialect: &dyn Dialect,
    record: &Record,
    images: &Images,
    origin: &str,
    settings: &Settings,
    trace_id: &str,
) -> Result<(Outgoing, u64), ApiError> {
    let result = outbound::generate(settings, &record.request, images, trace_id)
        .await
        .map_err(|e| e.in_field_names(dialect.field_names()))?;
    let mut stash = Stash::with_names(origin, record.created, &record.image_names);
    let out = dialect.render(&job_of(record), result, &mut stash)?;
    let stored = stash.pending.iter().map(|(_, png)| png.len() as u64).sum();
    store(stash).await?;
    Ok((out, stored))
}

/// Runs a job after the reply, or takes over one whose runner stopped: its
/// generation (if not done), then its webhook. Failures go to the log; the record
/// says what happened.
async fn drive(dialect: &'static dyn Dialect, settings: Settings, id: u64, origin: String) {
    let trace_id = jobs::run_trace(id);
    if let Err(e) = drive_job(dialect, &settings, id, &origin, &trace_id).await {
        eprintln!(
            "{}",
            serde_json::json!({"level": "ERROR", "target": "edge", "traceId": trace_id,
                "error": format!("job {id}: {}", e.message)})
        );
    }
}

async fn drive_job(
    dialect: &'static dyn Dialect,
    settings: &Settings,
    id: u64,
    origin: &str,
    trace_id: &str,
) -> Result<(), ApiError> {
    let kv = open().await?;
    let Some(mut record) = load(&kv, id).await? else {
        return Ok(());
    };
    if !record.claimable(unix_now()) {
        return Ok(());
    }
    let run_now = record.claim(unix_now());
    save(&kv, &record).await?;
    if run_now && record.state == State::Processing {
        let images = match kv
            .get(&jobs::input_key(id))
            .await
            .map_err(|e| kv_error("reading from", e))?
        {
            Some(kept) => kept_images(kept)?,
            None => Images::default(),
        };
        let result = {
            let work = pin!(run(dialect, &record, &images, origin, settings, trace_id));
            let beat = pin!(heartbeat(&kv, id));
            match select(work, beat).await {
                Either::Left((result, _)) => result,
                Either::Right(((), _)) => unreachable!("the heartbeat never ends"),
            }
        };
        let (out, stored) = match result {
            Ok(done) => done,
            Err(err) => (dialect.render_error(&err, trace_id), 0),
        };
        let answer = answer_of(&out, &record);
        record = load(&kv, id).await?.unwrap_or(record);
        record.finish(out.status, answer);
        record.lease_until = unix_now() + LEASE_SECS;
        save(&kv, &record).await?;
        settle(&kv, &record, stored).await?;
        let _ = kv.delete(&jobs::input_key(id)).await;
    }
    deliver_webhook(&kv, settings, &mut record).await?;
    if !record.needs_work(unix_now()) {
        let _ = kv.delete(&jobs::run_key(id)).await;
    }
    record.lease_until = 0;
    save(&kv, &record).await
}

/// Renews a running job's lease until dropped.
async fn heartbeat(kv: &Store, id: u64) {
    loop {
        spin_sdk::time::sleep(Duration::from_secs(HEARTBEAT_SECS)).await;
        if let Ok(Some(mut record)) = load(kv, id).await {
            record.lease_until = unix_now() + LEASE_SECS;
            let _ = save(kv, &record).await;
        }
    }
}

/// POSTs the answer to the job's webhook until it arrives or the retry time is over,
/// keeping the lease while it waits.
async fn deliver_webhook(
    kv: &Store,
    settings: &Settings,
    record: &mut Record,
) -> Result<(), ApiError> {
    while let Some(hook) = record.webhook.clone().filter(|w| w.pending(unix_now())) {
        let wait = hook.next_at.saturating_sub(unix_now());
        if wait > 0 {
            spin_sdk::time::sleep(Duration::from_secs(wait.min(HEARTBEAT_SECS))).await;
            record.lease_until = unix_now() + LEASE_SECS;
            save(kv, record).await?;
            continue;
        }
        let sent = outbound::post_webhook(settings, &hook.url, &record.answer).await;
        let webhook = record.webhook.as_mut().expect("checked above");
        match sent {
            Ok(()) => webhook.delivered = true,
            Err(e) => {
                webhook.failed(unix_now(), e);
            }
        }
        record.lease_until = unix_now() + LEASE_SECS;
        save(kv, record).await?;
    }
    Ok(())
}

/// Expired jobs and images go; jobs whose runner stopped are taken over. Runs on
/// each ModelsLab request (Spin has no timer to run it on).
async fn maintain(kv: &Store, dialect: &'static dyn Dialect, settings: &Settings, origin: &str) {
    let Ok(keys) = kv.get_keys().await.collect().await else {
        return;
    };
    let now = unix_now();
    for key in stash::expired(&keys, now).chain(jobs::expired(&keys, now)) {
        let _ = kv.delete(key).await;
    }
    for id in jobs::needing_work(&keys).filter(|&id| jobs::expires(id) > now) {
        if let Ok(Some(record)) = load(kv, id).await
            && record.claimable(now)
        {
            spin_sdk::wasip3::spawn(drive(dialect, settings.clone(), id, origin.to_string()));
        }
    }
}

/// `POST .../fetch/{id}`: the job's answer once done; "processing" with the time
/// left until then. A job whose runner stopped is taken over here.
pub async fn fetch(
    dialect: &'static dyn Dialect,
    id_text: &str,
    key: Option<&str>,
    origin: &str,
    path: &str,
    settings: &Settings,
) -> Result<Outgoing, ApiError> {
    let missing = || {
        ApiError::new(
            404,
            format!("no job {id_text:?} for this key (jobs are kept for 24 hours)"),
        )
    };
    let id = jobs::parse_id(id_text).ok_or_else(missing)?;
    let kv = open().await?;
    maintain(&kv, dialect, settings, origin).await;
    let record = load(&kv, id).await?.ok_or_else(missing)?;
    let now = unix_now();
    if record.owner != jobs::key_digest(key) || record.expires <= now {
        return Err(missing());
    }
    if record.state == State::Done {
        return Ok(Outgoing::json(record.status, &record.answer));
    }
    // The server running it knows best; else the estimate made at submission.
    let eta = match outbound::progress(settings, &jobs::run_trace(id)).await {
        Some(p) => p.eta_secs.ceil().max(1.0),
        None => record.eta_left(now),
    };
    Ok(modelslab::render_processing(
        &job_of(&record),
        id,
        eta,
        &format!("{origin}{path}"),
        &future_links(&record, origin),
    ))
}

/// A job's images as kept in the store until it runs: the multipart body of
/// `contract::wire::encode_images` after its Content-Type and a newline.
fn keep_images(images: &Images) -> Result<Vec<u8>, ApiError> {
    let body = contract::wire::encode_images(images)
        .map_err(|e| ApiError::internal(format!("keeping the job's images: {e}")))?;
    let mut kept = body.content_type.into_bytes();
    kept.push(b'\n');
    kept.extend_from_slice(&body.bytes);
    Ok(kept)
}

/// Reads what [`keep_images`] wrote (or, from an edge before masks and control
/// images, the init image's bytes alone).
fn kept_images(kept: Vec<u8>) -> Result<Images, ApiError> {
    if !kept.starts_with(b"multipart/form-data") {
        return Ok(Images {
            init_image: Some(kept.into()),
            ..Images::default()
        });
    }
    let broken = |e: String| ApiError::internal(format!("the job's kept images: {e}"));
    let split = kept
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| broken("no content type".into()))?;
    let content_type = std::str::from_utf8(&kept[..split])
        .map_err(|e| broken(e.to_string()))?
        .to_string();
    let body = bytes::Bytes::from(kept).slice(split + 1..);
    contract::wire::read_images(&content_type, body).map_err(|e| broken(e.to_string()))
}
