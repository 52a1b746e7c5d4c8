//! The FIFO queue of evaluations and the one worker thread that runs them.
//!
//! Tensors are not `Sync`, and one evaluation at a time keeps the device's memory for itself,
//! so a single `std::thread` owns the [`Engine`] (the loaded models and data). Request handlers
//! on the async runtime push [`Job`]s; each job carries the sending half of its client's
//! stream. Waiting clients are told their position ([`QueuePosition`]: the number of jobs
//! waiting ahead of theirs, the running one not counted, so 0 means "next") when they enter
//! the queue and whenever it changes. Jobs whose client went away
//! while waiting are dropped; a running job notices within one batch, because the engine's
//! progress callback checks the stream and the deadline. Errors and panics of a job are sent to
//! its client and the worker goes on with the next one.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use rfb_proto::v1::{evaluate_event::Event, Done, EvaluateEvent, QueuePosition};
use tokio::sync::mpsc::UnboundedSender;

use crate::catalog::{Catalog, PreparedEvaluation};
use crate::engine::{Engine, EngineError};

/// What a client's stream receives.
pub type EventSender = UnboundedSender<Result<EvaluateEvent, tonic::Status>>;

/// One queued evaluation.
pub struct Job {
    pub prepared: PreparedEvaluation,
    pub events: EventSender,
    pub deadline: Option<Instant>,
    pub received: Instant,
    last_position: Option<i64>,
}

impl Job {
    pub fn new(prepared: PreparedEvaluation, events: EventSender, deadline: Option<Instant>) -> Self {
        Job { prepared, events, deadline, received: Instant::now(), last_position: None }
    }

    fn send(&self, event: Event) -> bool {
        self.events.send(Ok(EvaluateEvent { event: Some(event) })).is_ok()
    }

    fn fail(&self, error: EngineError) {
        let _ = self.events.send(Err(error.into()));
    }

    fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    fn tell_position(&mut self, ahead: i64) {
        if self.last_position != Some(ahead) {
            self.last_position = Some(ahead);
            self.send(Event::Queued(QueuePosition { ahead }));
        }
    }
}

#[derive(Default)]
struct QueueState {
    pending: VecDeque<Job>,
    shutdown: bool,
}

impl QueueState {
    /// Drops jobs whose client left or whose deadline passed, and tells the others their
    /// position if it changed.
    fn refresh(&mut self) {
        self.pending.retain(|job| {
            if job.events.is_closed() {
                tracing::info!(model = %job.prepared.model, "client left while waiting; job dropped");
                false
            } else if job.expired() {
                job.fail(EngineError::DeadlineExceeded);
                false
            } else {
                true
            }
        });
        for (index, job) in self.pending.iter_mut().enumerate() {
            job.tell_position(index as i64);
        }
    }
}

/// The queue shared by the request handlers and the worker.
#[derive(Default)]
pub struct Queue {
    state: Mutex<QueueState>,
    wake: Condvar,
}

impl Queue {
    pub fn new() -> Arc<Self> {
        Arc::new(Queue::default())
    }

    /// Appends a job; its client is told its position at once.
    pub fn submit(&self, job: Job) {
        let mut state = self.state.lock().expect("queue lock");
        state.pending.push_back(job);
        state.refresh();
        drop(state);
        self.wake.notify_one();
    }

    /// Jobs waiting (not counting the running one).
    pub fn waiting(&self) -> usize {
        self.state.lock().expect("queue lock").pending.len()
    }

    /// Prunes and renumbers the waiting jobs (called by the worker between batches).
    pub fn refresh(&self) {
        self.state.lock().expect("queue lock").refresh();
    }

    /// Stops the worker after its current job; waiting jobs are dropped (their clients see the
    /// stream end with UNAVAILABLE).
    pub fn shutdown(&self) {
        let mut state = self.state.lock().expect("queue lock");
        state.shutdown = true;
        for job in state.pending.drain(..) {
            let _ = job.events.send(Err(tonic::Status::unavailable("the evaluator is shutting down")));
        }
        drop(state);
        self.wake.notify_all();
    }

    fn next(&self) -> Option<Job> {
        let mut state = self.state.lock().expect("queue lock");
        loop {
            if state.shutdown {
                return None;
            }
            if let Some(job) = state.pending.pop_front() {
                state.refresh();
                return Some(job);
            }
            state = self.wake.wait(state).expect("queue lock");
        }
    }

}

/// Starts the worker thread; it runs until [`Queue::shutdown`].
pub fn spawn_worker(catalog: Arc<Catalog>, queue: Arc<Queue>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name("evaluator-worker".into()).spawn(move || {
        let mut engine = Engine::new(catalog);
        while let Some(job) = queue.next() {
            run_job(&mut engine, &queue, job);
        }
    })
}

fn run_job(engine: &mut Engine, queue: &Queue, mut job: Job) {
    if job.events.is_closed() {
        tracing::info!(model = %job.prepared.model, "client left while waiting; job dropped");
        return;
    }
    if job.expired() {
        job.fail(EngineError::DeadlineExceeded);
        return;
    }
    job.tell_position(0);
    let started = Instant::now();
    tracing::info!(
        model = %job.prepared.model,
        attacks = job.prepared.attacks.len(),
        waited_seconds = job.received.elapsed().as_secs_f64(),
        "evaluation started"
    );
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        engine.run(&job.prepared, &mut |event| {
            if job.events.is_closed() {
                return Err(EngineError::Cancelled);
            }
            if job.expired() {
                return Err(EngineError::DeadlineExceeded);
            }
            queue.refresh();
            if job.send(event) {
                Ok(())
            } else {
                Err(EngineError::Cancelled)
            }
        })
    }));
    let seconds = started.elapsed().as_secs_f64();
    match outcome {
        Ok(Ok(())) => {
            job.send(Event::Done(Done { elapsed_seconds: job.received.elapsed().as_secs_f64() }));
            tracing::info!(model = %job.prepared.model, seconds, "evaluation done");
        }
        Ok(Err(EngineError::Cancelled)) => {
            tracing::info!(model = %job.prepared.model, seconds, "evaluation cancelled by the client");
        }
        Ok(Err(error)) => {
            tracing::warn!(model = %job.prepared.model, %error, "evaluation failed");
            job.fail(error);
        }
        Err(payload) => {
            let error = EngineError::from_panic(payload.as_ref());
            tracing::error!(model = %job.prepared.model, %error, "evaluation panicked; models unloaded");
            engine.reset();
            job.fail(error);
        }
    }
}
