//! Where each request stands, by trace id, for `GET /v1/progress/{trace_id}`: the
//! queue knows the waiting ones; the worker notes the running batch's steps here.

use std::sync::Mutex;
use std::time::Instant;

use contract::{Progress, ProgressState};

/// The running batch: its trace ids, when it started, and its steps so far.
#[derive(Default)]
pub struct Running {
    batch: Mutex<Option<Batch>>,
}

struct Batch {
    trace_ids: Vec<String>,
    started: Instant,
    step: usize,
    steps: usize,
}

impl Running {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Batch>> {
        self.batch.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A batch starts (the worker runs one at a time).
    pub fn start(&self, trace_ids: Vec<String>) {
        *self.lock() = Some(Batch {
            trace_ids,
            started: Instant::now(),
            step: 0,
            steps: 0,
        });
    }

    pub fn step(&self, step: usize, steps: usize) {
        if let Some(b) = self.lock().as_mut() {
            (b.step, b.steps) = (step, steps);
        }
    }

    pub fn end(&self) {
        *self.lock() = None;
    }

    /// Seconds the running batch still needs at its own pace so far, or
    /// `batch_secs` less its time spent before its first step.
    pub fn secs_left(&self, batch_secs: f64) -> f64 {
        self.lock()
            .as_ref()
            .map_or(0.0, |b| b.secs_left(batch_secs))
    }

    /// The running request with this trace id, if it is in the batch.
    pub fn of(&self, trace_id: &str, batch_secs: f64) -> Option<Progress> {
        let guard = self.lock();
        let b = guard.as_ref()?;
        b.trace_ids.iter().any(|t| t == trace_id).then(|| Progress {
            state: ProgressState::Running,
            ahead: 0,
            step: b.step as u32,
            steps: b.steps as u32,
            eta_secs: b.secs_left(batch_secs),
        })
    }
}

impl Batch {
    fn secs_left(&self, batch_secs: f64) -> f64 {
        let spent = self.started.elapsed().as_secs_f64();
        if self.step == 0 || self.steps == 0 {
            return (batch_secs - spent).max(0.0);
        }
        spent / self.step as f64 * (self.steps - self.step.min(self.steps)) as f64
    }
}

/// A request not queued or running here.
pub fn unknown() -> Progress {
    Progress {
        state: ProgressState::Unknown,
        ahead: 0,
        step: 0,
        steps: 0,
        eta_secs: 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_batch_reports_its_steps() {
        let running = Running::default();
        assert!(running.of("a", 2.0).is_none());
        running.start(vec!["a".into(), "b".into()]);
        let p = running.of("b", 2.0).unwrap();
        assert_eq!((p.state, p.step, p.steps), (ProgressState::Running, 0, 0));
        assert!(p.eta_secs <= 2.0);
        running.step(3, 12);
        let p = running.of("a", 2.0).unwrap();
        assert_eq!((p.step, p.steps), (3, 12));
        assert!(running.of("c", 2.0).is_none());
        running.end();
        assert!(running.of("a", 2.0).is_none());
        assert_eq!(running.secs_left(2.0), 0.0);
    }
}
