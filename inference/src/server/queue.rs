//! The bounded request queue between the HTTP handlers and the generation worker.
//! Handlers push (refused when full); a handler whose client went away takes its
//! job out again; the worker pops the oldest job and takes the queued jobs that can
//! share its batch.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::convert::Draft;
use crate::engine::Generated;

/// What the worker hands back for one job.
pub struct Done {
    pub generated: Generated,
    /// The settings that ran, defaults filled in.
    pub steps: usize,
    pub guidance: f64,
    /// Time in the queue, and loading the model.
    pub queued: Duration,
    /// The safety checker's verdict on each image (none: not checked).
    pub nsfw: Vec<Option<bool>>,
}

pub type Reply = Result<Done, contract::Error>;

pub struct Job {
    pub id: u64,
    /// The catalog name, and the weights it maps to.
    pub model: String,
    pub source: String,
    /// The weights of its refiner, when it asks for one (`draft.refiner_start`).
    pub refiner_source: Option<String>,
    pub draft: Draft,
    pub enqueued: Instant,
    /// After this the caller no longer waits: the job is dropped or stopped.
    pub deadline: Instant,
    /// Set when the caller went away.
    pub cancel: Arc<AtomicBool>,
    pub trace_id: String,
    pub reply: oneshot::Sender<Reply>,
}

impl Job {
    pub fn samples(&self) -> usize {
        self.draft.samples
    }

    /// Whether anyone still waits for this job.
    pub fn wanted(&self, now: Instant) -> bool {
        !self.cancel.load(Ordering::Relaxed) && now < self.deadline && !self.reply.is_closed()
    }
}

pub struct Queue {
    jobs: Mutex<VecDeque<Job>>,
    ready: Condvar,
    capacity: usize,
    next_id: AtomicU64,
    closed: AtomicBool,
    on_depth: Box<dyn Fn(usize) + Send + Sync>,
}

impl Queue {
    pub fn new(capacity: usize, on_depth: Box<dyn Fn(usize) + Send + Sync>) -> Queue {
        Queue {
            jobs: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
            capacity: capacity.max(1),
            next_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            on_depth,
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Job>> {
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many queued jobs are ahead of the one with this trace id, if it is queued.
    pub fn position(&self, trace_id: &str) -> Option<usize> {
        self.lock().iter().position(|j| j.trace_id == trace_id)
    }

    /// Whether a push now would be refused.
    pub fn is_full(&self) -> bool {
        self.len() >= self.capacity
    }

    /// Queues a job, or gives it back when the queue is full.
    pub fn push(&self, job: Job) -> Result<(), Box<Job>> {
        let mut jobs = self.lock();
        if jobs.len() >= self.capacity {
            return Err(Box::new(job));
        }
        jobs.push_back(job);
        (self.on_depth)(jobs.len());
        drop(jobs);
        self.ready.notify_one();
        Ok(())
    }

    /// Takes a job out (its caller went away); false if the worker has it already.
    pub fn remove(&self, id: u64) -> bool {
        let mut jobs = self.lock();
        let Some(i) = jobs.iter().position(|j| j.id == id) else {
            return false;
        };
        jobs.remove(i);
        (self.on_depth)(jobs.len());
        true
    }

    /// The oldest job, waiting for one; None once the queue is closed.
    pub fn pop(&self) -> Option<Job> {
        let mut jobs = self.lock();
        loop {
            if self.closed.load(Ordering::Relaxed) {
                return None;
            }
            if let Some(job) = jobs.pop_front() {
                (self.on_depth)(jobs.len());
                return Some(job);
            }
            jobs = self.ready.wait(jobs).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Takes out, oldest first, the jobs `fits` accepts, with what it made of each (it
    /// sees each job once, in queue order, and may keep count of what it accepted).
    pub fn take_where<T>(&self, mut fits: impl FnMut(&Job) -> Option<T>) -> Vec<(Job, T)> {
        let mut jobs = self.lock();
        let mut taken = Vec::new();
        let mut kept = VecDeque::with_capacity(jobs.len());
        for job in jobs.drain(..) {
            match fits(&job) {
                Some(made) => taken.push((job, made)),
                None => kept.push_back(job),
            }
        }
        *jobs = kept;
        (self.on_depth)(jobs.len());
        taken
    }

    /// Stops the worker after its current batch.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.ready.notify_all();
    }
}
