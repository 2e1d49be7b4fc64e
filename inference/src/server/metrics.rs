//! Prometheus metrics of the server (`GET /metrics`), on the `prometheus` crate.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Requests waiting in the queue.
    pub queue_depth: IntGauge,
    /// Requests being generated now.
    pub running: IntGauge,
    pub models_loaded: IntGauge,
    /// Images per UNet batch, and requests per batch.
    pub batch_images: Histogram,
    pub batch_requests: Histogram,
    /// Seconds per stage of a request: queue, load, prepare, denoise, decode, encode, total.
    pub stage_seconds: HistogramVec,
    /// Images made, by catalog model name and pipeline (txt2img, img2img, inpaint,
    /// controlnet, refiner).
    pub images: IntCounterVec,
    /// Requests that failed, by kind (invalid_request, unknown_model, overloaded,
    /// timeout, cancelled, internal, unauthorized).
    pub errors: IntCounterVec,
}

impl Metrics {
    pub fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new_custom(Some("sdgate".into()), None)?;
        let queue_depth = IntGauge::new("queue_depth", "Requests waiting in the queue")?;
        let running = IntGauge::new("running_requests", "Requests being generated")?;
        let models_loaded = IntGauge::new("models_loaded", "Models in memory")?;
        let sizes = vec![1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0];
        let batch_images = Histogram::with_opts(
            HistogramOpts::new("batch_images", "Images per UNet batch").buckets(sizes.clone()),
        )?;
        let batch_requests = Histogram::with_opts(
            HistogramOpts::new("batch_requests", "Requests per UNet batch").buckets(sizes),
        )?;
        let stage_seconds = HistogramVec::new(
            HistogramOpts::new("stage_seconds", "Seconds per stage of a request")
                .buckets(prometheus::exponential_buckets(0.005, 2.5, 14)?),
            &["stage"],
        )?;
        let images = IntCounterVec::new(
            Opts::new("images_total", "Images made, by model and pipeline"),
            &["model", "pipeline"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new("errors_total", "Requests that failed, by kind"),
            &["kind"],
        )?;
        for c in [
            Box::new(queue_depth.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(running.clone()),
            Box::new(models_loaded.clone()),
            Box::new(batch_images.clone()),
            Box::new(batch_requests.clone()),
            Box::new(stage_seconds.clone()),
            Box::new(images.clone()),
            Box::new(errors.clone()),
        ] {
            registry.register(c)?;
        }
        Ok(Metrics {
            registry,
            queue_depth,
            running,
            models_loaded,
            batch_images,
            batch_requests,
            stage_seconds,
            images,
            errors,
        })
    }

    pub fn stage(&self, stage: &str, d: std::time::Duration) {
        self.stage_seconds
            .with_label_values(&[stage])
            .observe(d.as_secs_f64());
    }

    pub fn error(&self, kind: &str) {
        self.errors.with_label_values(&[kind]).inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding to a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The metric label of an error of the contract.
pub fn error_kind(e: &contract::Error) -> &'static str {
    match e {
        contract::Error::InvalidRequest(_) => "invalid_request",
        contract::Error::UnknownModel(_) => "unknown_model",
        contract::Error::Overloaded(_) => "overloaded",
        contract::Error::Timeout(_) => "timeout",
        contract::Error::Internal(_) => "internal",
    }
}
