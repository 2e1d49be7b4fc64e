//! The generation worker: one thread that takes the oldest queued job, loads its
//! model if needed, gathers the queued jobs that can share its UNet batch (same
//! model and `BatchKey`, up to `max_batch` images), runs them as one, and hands each
//! caller its own images. One batch at a time: the engine already uses every core (or
//! the whole GPU), so two at once would only slow both.

use std::sync::Arc;
use std::time::Instant;

use contract::Error;

use super::AppState;
use super::convert::param_message;
use super::queue::{Done, Job};
use super::registry::Loaded;
use crate::engine::safety::{self, Replacement};
use crate::engine::{Control, EngineError, ErrorKind, GenerateParams};

pub fn run(app: Arc<AppState>) {
    while let Some(head) = app.queue.pop() {
        // A panic must not take the server down; the engine's own run in a joined
        // thread already turn into errors, this is the backstop for the rest.
        let app2 = app.clone();
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || serve(&app2, head)))
            .is_err()
        {
            tracing::error!("the worker caught a panic; the jobs of that batch got no answer");
        }
        app.running.end();
    }
}

fn engine_error(e: &anyhow::Error) -> Error {
    match ErrorKind::of(e) {
        ErrorKind::InvalidParam => Error::InvalidRequest(param_message(e)),
        ErrorKind::Cancelled => Error::Timeout("stopped: the caller stopped waiting".into()),
        ErrorKind::Internal => Error::Internal(format!("{e:#}")),
    }
}

/// A job's parameters for `loaded`: its draft resolved against the model, with the
/// ControlNets of the model's architecture (loaded on first use).
fn params_of(app: &AppState, job: &Job, loaded: &Loaded) -> anyhow::Result<GenerateParams> {
    let mut params = job.draft.resolve(&loaded.info);
    let arch = &loaded.info.architecture;
    for c in &job.draft.controls {
        let entry = c
            .entries
            .iter()
            .find(|e| e.architecture.as_deref() == Some(arch.as_str()))
            .or_else(|| c.entries.iter().find(|e| e.architecture.is_none()))
            .ok_or_else(|| {
                let made_for: Vec<&str> = c
                    .entries
                    .iter()
                    .filter_map(|e| e.architecture.as_deref())
                    .collect();
                EngineError::invalid(
                    "controlnets",
                    format!(
                        "this server has no ControlNet {:?} for {arch} models (only for {})",
                        c.name,
                        made_for.join(", ")
                    ),
                )
            })?;
        let net = app
            .registry
            .controlnet(&entry.source, loaded.pipeline.model_dtypes().0, &job.source)
            .map_err(|e| anyhow::anyhow!("the ControlNet {}: {e:#}", entry.name))?;
        params.controls.push(Control {
            net,
            image: c.image.clone(),
            scale: c.scale,
            start: c.start,
            end: c.end,
        });
    }
    Ok(params)
}

fn serve(app: &AppState, head: Job) {
    let now = Instant::now();
    if !head.wanted(now) {
        refuse_unwanted(head, now);
        return;
    }
    let load_started = Instant::now();
    let loaded = match app.registry.get(&head.source) {
        Ok(l) => l,
        Err(e) => {
            let _ = head
                .reply
                .send(Err(Error::Internal(format!("model {}: {e:#}", head.model))));
            return;
        }
    };
    let add_ons = head.draft.add_ons.clone();
    let loaded = match app.registry.with_add_ons(&head.source, &loaded, &add_ons) {
        Ok(l) => l,
        Err(e) => {
            let _ = head.reply.send(Err(engine_error(&e)));
            return;
        }
    };
    app.metrics.stage("load", load_started.elapsed());
    let pipeline = loaded.pipeline.clone();
    let plan = match params_of(app, &head, &loaded).and_then(|p| pipeline.plan(p)) {
        Ok(plan) => plan,
        Err(e) => {
            let _ = head.reply.send(Err(engine_error(&e)));
            return;
        }
    };
    let key = plan.key().clone();
    // Gather the queued jobs that can run with this one, each planned once.
    let mut images = head.samples();
    let mut jobs = vec![head];
    let mut plans = vec![plan];
    // A job with a refiner runs alone (its two models, its own schedule split).
    let refiner = match jobs[0].refiner_source.clone() {
        None => None,
        Some(r) => match app.registry.get(&r) {
            Ok(l) => Some(l),
            Err(e) => {
                let head = jobs.remove(0);
                let _ = head
                    .reply
                    .send(Err(Error::Internal(format!("the refiner: {e:#}"))));
                return;
            }
        },
    };
    if images < app.max_batch && refiner.is_none() {
        let source = jobs[0].source.clone();
        let now = Instant::now();
        let others = app.queue.take_where(|job| {
            if job.source != source
                || job.refiner_source.is_some()
                || job.draft.add_ons != add_ons
                || images + job.samples() > app.max_batch
                || !job.wanted(now)
            {
                return None;
            }
            // A job whose plan fails stays queued: it gets its error when it is the head.
            let plan = params_of(app, job, &loaded)
                .and_then(|p| pipeline.plan(p))
                .ok()?;
            (*plan.key() == key).then(|| {
                images += job.samples();
                plan
            })
        });
        for (job, plan) in others {
            jobs.push(job);
            plans.push(plan);
        }
    }

    let trace_ids: Vec<&str> = jobs.iter().map(|j| j.trace_id.as_str()).collect();
    let span =
        tracing::info_span!("batch", trace_ids = %trace_ids.join(","), model = %jobs[0].model);
    let _enter = span.enter();
    let started = Instant::now();
    for job in &jobs {
        app.metrics
            .stage("queue", started.duration_since(job.enqueued));
    }
    app.metrics.batch_images.observe(images as f64);
    app.metrics.batch_requests.observe(jobs.len() as f64);
    app.metrics.running.add(jobs.len() as i64);
    tracing::info!(
        requests = jobs.len(),
        images,
        steps = key.steps,
        width = key.width,
        height = key.height,
        "batch starts"
    );

    app.running
        .start(jobs.iter().map(|j| j.trace_id.clone()).collect());
    // Stop at the next step once nobody in the batch waits any more.
    let mut wanted = |done: usize, total: usize| {
        app.running.step(done, total);
        let now = Instant::now();
        jobs.iter().any(|j| j.wanted(now))
    };
    let result = match (&refiner, jobs[0].draft.refiner_start) {
        (Some(r), Some(start)) => pipeline
            .generate_refined(&r.pipeline, plans[0].params(), start, &mut wanted)
            .map(|g| vec![g]),
        _ => pipeline.run(&plans, &mut wanted),
    };
    app.metrics.running.sub(jobs.len() as i64);
    app.running.end();
    let secs = started.elapsed().as_secs_f64();
    app.record_batch_secs(secs);

    match result {
        Ok(outs) => {
            if let Some(first) = outs.first() {
                app.metrics.stage("prepare", first.timings.prepare);
                app.metrics.stage("denoise", first.timings.denoise);
                app.metrics.stage("decode", first.timings.decode);
            }
            tracing::info!(secs, "batch done");
            for ((job, plan), mut generated) in jobs.into_iter().zip(&plans).zip(outs) {
                let nsfw = match job.draft.safety {
                    None => vec![None; generated.images.len()],
                    Some(how) => match check(app, &job.source, &mut generated, how) {
                        Ok(flags) => flags,
                        Err(e) => {
                            let _ = job
                                .reply
                                .send(Err(Error::Internal(format!("the safety checker: {e:#}"))));
                            continue;
                        }
                    },
                };
                app.metrics
                    .images
                    .with_label_values(&[&job.model, pipeline_kind(&job, plan.params())])
                    .inc_by(generated.images.len() as u64);
                let done = Done {
                    generated,
                    steps: plan.params().steps,
                    guidance: plan.params().guidance,
                    queued: started.duration_since(job.enqueued),
                    nsfw,
                };
                let _ = job.reply.send(Ok(done));
            }
        }
        Err(e) => {
            let err = engine_error(&e);
            tracing::warn!(error = %err, "batch failed");
            for job in jobs {
                let _ = job.reply.send(Err(err.clone()));
            }
        }
    }
}

/// Which pipeline a job ran, for the metrics.
fn pipeline_kind(job: &Job, params: &GenerateParams) -> &'static str {
    if job.refiner_source.is_some() {
        "refiner"
    } else if !params.controls.is_empty() {
        "controlnet"
    } else if params.mask.is_some() {
        "inpaint"
    } else if params.init_image.is_some() {
        "img2img"
    } else {
        "txt2img"
    }
}

/// Runs the safety checker of the model in `source` over `generated`'s images and replaces
/// the flagged ones; no checker for it: every verdict is none.
fn check(
    app: &AppState,
    source: &str,
    generated: &mut crate::engine::Generated,
    how: Replacement,
) -> anyhow::Result<Vec<Option<bool>>> {
    let Some(checker) = app
        .registry
        .safety_checker(source, app.catalog.safety_checker.as_deref())?
    else {
        return Ok(vec![None; generated.images.len()]);
    };
    let started = Instant::now();
    let verdicts = checker.check(&generated.images.iter().map(|(i, _)| i).collect::<Vec<_>>())?;
    app.metrics.stage("safety", started.elapsed());
    Ok(generated
        .images
        .iter_mut()
        .zip(verdicts)
        .map(|((img, _), v)| {
            if v.nsfw {
                *img = safety::replace(img, how);
            }
            Some(v.nsfw)
        })
        .collect())
}

/// A job nobody waits for any more: the caller left, or its deadline passed in the queue.
fn refuse_unwanted(job: Job, now: Instant) {
    if now >= job.deadline {
        let waited = now.duration_since(job.enqueued).as_secs();
        let _ = job.reply.send(Err(Error::Timeout(format!(
            "waited {waited} s in the queue, past the request's deadline"
        ))));
    }
}

/// Runs the worker on its own thread; it ends when the queue is closed.
pub fn spawn(app: Arc<AppState>) -> std::thread::JoinHandle<()> {
    let span = tracing::info_span!("worker");
    std::thread::Builder::new()
        .name("generate".into())
        .spawn(move || {
            let _e = span.enter();
            run(app)
        })
        .expect("spawning the worker thread")
}
