//! The queue of evaluations and the one worker thread that runs them: the "queue" step of a
//! request's way (see [`crate::request`]).
//!
//! Tensors are not `Sync`, and one evaluation at a time keeps the device's memory for itself,
//! so a single `std::thread` owns the [`Engine`] (the loaded models and data). Request handlers
//! on the async runtime push [`Job`]s; each job carries the sending half of its client's
//! stream.
//!
//! * **Bounded.** At most [`Limits::max_queue`] jobs wait (the running one not counted), and at
//!   most [`Limits::max_queue_per_client`] of one client; beyond that [`Queue::submit`] refuses
//!   with RESOURCE_EXHAUSTED, so no client can fill the queue for the others.
//! * **Fair.** Clients take turns: the next job is the oldest waiting job of the client whose
//!   last job started longest ago (a client that never had one goes first), so one client's
//!   ten jobs do not make another's single job wait for all ten. A client is its bearer token
//!   when several tokens are configured, else its peer address.
//! * **Positions.** Waiting clients are told their position ([`QueuePosition`]: the number of
//!   jobs that will start before theirs, the running one not counted, so 0 means "next") when
//!   they enter the queue and whenever it changes; taking turns may put a newcomer ahead.
//! * **Stopping.** Jobs whose client went away or whose deadline passed while waiting are
//!   dropped. A running job asks, between attack iterations (and restarts, targets, components
//!   and batches), whether its client is still there, its deadline still ahead and the server
//!   not shutting down, so it stops within one iteration; [`Queue::shutdown`] ends the waiting
//!   jobs with UNAVAILABLE and stops the running one the same way.
//! * **Health.** Every such question is also a heartbeat: [`Worker::state`] reports the worker
//!   stuck when a job has not asked for longer than a threshold, and gone when its thread has
//!   ended. Errors and panics of a job are sent to its client and the worker goes on with the
//!   next one; no lock here is ever left poisoned for good (a poisoned lock is taken over).

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rfb_proto::v1::{evaluate_event::Event, Done, EvaluateEvent, QueuePosition};
use tokio::sync::mpsc::UnboundedSender;

use crate::catalog::Catalog;
use crate::request::{EngineError, Limits, PathRedactor, PreparedEvaluation};
use crate::runner::Runner;
use crate::sandbox::{Protection, SandboxConfig};

/// What a client's stream receives.
pub type EventSender = UnboundedSender<Result<EvaluateEvent, tonic::Status>>;

/// How often a running job refreshes the waiting ones (between its attack iterations).
const REFRESH_EVERY: Duration = Duration::from_millis(250);

/// Clients whose last turn is older than this many turns are forgotten (and then count as new).
const REMEMBERED_TURNS: u64 = 1024;

/// One queued evaluation.
pub struct Job {
    pub prepared: PreparedEvaluation,
    pub events: EventSender,
    pub deadline: Option<Instant>,
    pub received: Instant,
    /// Who asked (a token's name, else the peer's address): the queue takes turns by it.
    pub client: String,
    last_position: Option<i64>,
}

impl Job {
    pub fn new(prepared: PreparedEvaluation, events: EventSender, deadline: Option<Instant>, client: String) -> Self {
        Job { prepared, events, deadline, received: Instant::now(), client, last_position: None }
    }

    fn send(&self, event: Event) -> bool {
        self.events.send(Ok(EvaluateEvent { event: Some(event) })).is_ok()
    }

    fn fail(&self, error: EngineError) {
        let _ = self.events.send(Err(error.into()));
    }

    /// Fails the job with an error of the engine, whose message may name server paths: the
    /// client gets it without them.
    fn fail_redacted(&self, error: &EngineError, redactor: &PathRedactor) {
        let _ = self.events.send(Err(redactor.status(error)));
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

    /// Why the job must stop now, if it must (asked between attack iterations; a heartbeat,
    /// and now and then a refresh of the waiting jobs, so that those whose client left or
    /// whose deadline passed are told while a long batch runs).
    fn stop_reason(&self, queue: &Queue) -> Option<EngineError> {
        if queue.beat() {
            queue.refresh();
        }
        self.stop_reason_quietly(queue)
    }

    /// [`Job::stop_reason`] without the heartbeat: asked every few milliseconds while a worker
    /// process runs the job, when only the worker's own signs of life say it is not stuck.
    fn stop_reason_quietly(&self, queue: &Queue) -> Option<EngineError> {
        if queue.refresh_due() {
            queue.refresh();
        }
        if queue.is_stopping() {
            Some(EngineError::Unavailable("the evaluator is shutting down; the job was stopped".into()))
        } else if self.events.is_closed() {
            Some(EngineError::Cancelled)
        } else if self.expired() {
            Some(EngineError::DeadlineExceeded)
        } else {
            None
        }
    }
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Default)]
struct QueueState {
    /// Waiting jobs, in arrival order.
    pending: Vec<Job>,
    /// The turn at which each client's last job started (a client not here never had one).
    last_turn: HashMap<String, u64>,
    /// Jobs started so far.
    turn: u64,
    shutdown: bool,
}

impl QueueState {
    /// Indices into `pending` in the order the jobs will start: turn by turn, the client whose
    /// last job started longest ago (never: first; ties by arrival) starts its oldest job.
    fn order(&self) -> Vec<usize> {
        // (last turn, that client's waiting jobs in arrival order), one entry per client.
        let mut clients: Vec<(u64, std::collections::VecDeque<usize>)> = Vec::new();
        let mut slot: HashMap<&str, usize> = HashMap::new();
        for (index, job) in self.pending.iter().enumerate() {
            let at = *slot.entry(job.client.as_str()).or_insert_with(|| {
                clients.push((self.last_turn.get(&job.client).copied().unwrap_or(0), Default::default()));
                clients.len() - 1
            });
            clients[at].1.push_back(index);
        }
        let mut order = Vec::with_capacity(self.pending.len());
        let mut turn = self.turn;
        while let Some(next) =
            clients.iter().enumerate().filter_map(|(c, (last, jobs))| jobs.front().map(|&first| (*last, first, c))).min().map(|(_, _, c)| c)
        {
            turn += 1;
            let (last, jobs) = &mut clients[next];
            *last = turn;
            order.extend(jobs.pop_front());
        }
        order
    }

    /// Drops jobs whose client left or whose deadline passed, and tells the others their
    /// position if it changed.
    fn refresh(&mut self) {
        self.pending.retain(|job| {
            if job.events.is_closed() {
                tracing::info!(model = %job.prepared.model, client = %job.client, "client left while waiting; job dropped");
                false
            } else if job.expired() {
                job.fail(EngineError::DeadlineExceeded);
                false
            } else {
                true
            }
        });
        let order = self.order();
        for (ahead, index) in order.into_iter().enumerate() {
            self.pending[index].tell_position(ahead as i64);
        }
    }

    fn waiting_of(&self, client: &str) -> usize {
        self.pending.iter().filter(|job| job.client == client).count()
    }
}

/// The queue shared by the request handlers and the worker, with the worker's heartbeat.
pub struct Queue {
    state: Mutex<QueueState>,
    wake: Condvar,
    limits: Limits,
    stopping: AtomicBool,
    epoch: Instant,
    /// Milliseconds after `epoch` of the worker's last sign of life.
    heartbeat: AtomicU64,
    /// Whether the worker is running a job.
    busy: AtomicBool,
    /// Milliseconds after `epoch` of the last refresh asked for by [`Queue::beat`].
    refreshed: AtomicU64,
}

impl Queue {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Queue {
            state: Mutex::new(QueueState::default()),
            wake: Condvar::new(),
            limits,
            stopping: AtomicBool::new(false),
            epoch: Instant::now(),
            heartbeat: AtomicU64::new(0),
            busy: AtomicBool::new(false),
            refreshed: AtomicU64::new(0),
        })
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Queues a job, or refuses it: UNAVAILABLE while shutting down, RESOURCE_EXHAUSTED when
    /// the queue or the client's share of it is full. Its client is told its position at once.
    pub fn submit(&self, job: Job) -> Result<(), EngineError> {
        let mut state = locked(&self.state);
        if state.shutdown {
            return Err(EngineError::Unavailable("the evaluator is shutting down".into()));
        }
        state.refresh();
        let waiting = state.pending.len();
        if waiting >= self.limits.max_queue {
            return Err(EngineError::ResourceExhausted(format!(
                "the queue is full: {waiting} jobs are waiting, the most this server takes (--max-queue {}); try again later",
                self.limits.max_queue
            )));
        }
        let mine = state.waiting_of(&job.client);
        if mine >= self.limits.max_queue_per_client {
            return Err(EngineError::ResourceExhausted(format!(
                "{mine} of your jobs are already waiting, the most one client may queue (--max-queue-per-client {}); \
                 wait for one to start",
                self.limits.max_queue_per_client
            )));
        }
        tracing::info!(model = %job.prepared.model, client = %job.client, waiting = waiting + 1, "job queued");
        state.pending.push(job);
        state.refresh();
        drop(state);
        self.wake.notify_one();
        Ok(())
    }

    /// Jobs waiting (not counting the running one).
    pub fn waiting(&self) -> usize {
        locked(&self.state).pending.len()
    }

    /// Prunes and renumbers the waiting jobs (called by the worker between batches).
    pub fn refresh(&self) {
        locked(&self.state).refresh();
    }

    /// Stops the worker: waiting jobs end with UNAVAILABLE at once, the running one within one
    /// attack iteration (it sees [`Queue::is_stopping`]); nothing is accepted any more.
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let mut state = locked(&self.state);
        state.shutdown = true;
        let dropped = state.pending.len();
        for job in state.pending.drain(..) {
            job.fail(EngineError::Unavailable("the evaluator is shutting down; the job was not started".into()));
        }
        drop(state);
        if dropped > 0 {
            tracing::info!(jobs = dropped, "waiting jobs ended with UNAVAILABLE");
        }
        self.wake.notify_all();
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// A sign of life from the worker; true when the waiting jobs were last refreshed more
    /// than [`REFRESH_EVERY`] ago (the caller then refreshes them).
    pub fn beat(&self) -> bool {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.heartbeat.store(now, Ordering::Relaxed);
        self.refresh_due()
    }

    /// True when the waiting jobs were last refreshed more than [`REFRESH_EVERY`] ago (the
    /// caller then refreshes them); no heartbeat.
    pub fn refresh_due(&self) -> bool {
        let now = self.epoch.elapsed().as_millis() as u64;
        let last = self.refreshed.load(Ordering::Relaxed);
        now.saturating_sub(last) >= REFRESH_EVERY.as_millis() as u64
            && self.refreshed.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }

    /// Time since the worker's last sign of life.
    pub fn since_heartbeat(&self) -> Duration {
        let last = Duration::from_millis(self.heartbeat.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    /// Whether the worker is running a job.
    pub fn busy(&self) -> bool {
        self.busy.load(Ordering::Relaxed)
    }

    fn next(&self) -> Option<Job> {
        let mut state = locked(&self.state);
        loop {
            if state.shutdown {
                return None;
            }
            state.refresh();
            if let Some(&first) = state.order().first() {
                let job = state.pending.remove(first);
                state.turn += 1;
                let turn = state.turn;
                state.last_turn.insert(job.client.clone(), turn);
                if state.last_turn.len() > REMEMBERED_TURNS as usize {
                    let pending: std::collections::HashSet<String> = state.pending.iter().map(|j| j.client.clone()).collect();
                    state.last_turn.retain(|client, last| pending.contains(client) || *last + REMEMBERED_TURNS > turn);
                }
                state.refresh();
                return Some(job);
            }
            state = self.wake.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// What the worker is doing, for health checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// Waiting for a job.
    Idle,
    /// Running a job that showed a sign of life recently.
    Busy,
    /// Running a job that has shown no sign of life for this long.
    Stuck(Duration),
    /// The thread has ended (after shutdown, or it died).
    Gone,
}

impl WorkerState {
    /// Whether the health service should report SERVING.
    pub fn serving(self) -> bool {
        matches!(self, WorkerState::Idle | WorkerState::Busy)
    }
}

/// The worker thread.
pub struct Worker {
    queue: Arc<Queue>,
    handle: Mutex<Option<JoinHandle<()>>>,
}

impl Worker {
    /// Starts the worker thread; it runs until [`Queue::shutdown`]. Jobs run in worker
    /// processes under `sandbox` (or in this thread, `sandbox.in_process`); `protection` is
    /// what [`crate::model_process::probe`] found.
    pub fn spawn(catalog: Arc<Catalog>, queue: Arc<Queue>, sandbox: SandboxConfig, protection: Protection) -> std::io::Result<Arc<Worker>> {
        let thread_queue = queue.clone();
        let handle = std::thread::Builder::new().name("evaluator-worker".into()).spawn(move || {
            let queue = thread_queue;
            let mut runner = Runner::new(catalog, sandbox, protection);
            while let Some(job) = queue.next() {
                queue.busy.store(true, Ordering::Relaxed);
                queue.beat();
                if catch_unwind(AssertUnwindSafe(|| run_job(&mut runner, &queue, job))).is_err() {
                    tracing::error!("a job panicked outside the engine; models unloaded, going on");
                    runner.reset();
                }
                queue.busy.store(false, Ordering::Relaxed);
                queue.beat();
            }
            tracing::info!("worker stopped");
        })?;
        queue.beat();
        Ok(Arc::new(Worker { queue, handle: Mutex::new(Some(handle)) }))
    }

    /// Whether the thread has ended.
    pub fn is_finished(&self) -> bool {
        match locked(&self.handle).as_ref() {
            Some(handle) => handle.is_finished(),
            None => true,
        }
    }

    /// Idle, busy, stuck (a job silent for longer than `stuck_after`) or gone.
    pub fn state(&self, stuck_after: Duration) -> WorkerState {
        if self.is_finished() {
            WorkerState::Gone
        } else if !self.queue.busy() {
            WorkerState::Idle
        } else {
            let silent = self.queue.since_heartbeat();
            if silent > stuck_after {
                WorkerState::Stuck(silent)
            } else {
                WorkerState::Busy
            }
        }
    }
}

fn run_job(runner: &mut Runner, queue: &Queue, mut job: Job) {
    let redactor = runner.catalog().redactor().clone();
    if let Some(reason) = job.stop_reason(queue) {
        finish(&job, Err(reason), 0.0, &redactor);
        return;
    }
    job.tell_position(0);
    let started = Instant::now();
    tracing::info!(
        model = %job.prepared.model,
        client = %job.client,
        attacks = job.prepared.attacks.len(),
        waited_seconds = job.received.elapsed().as_secs_f64(),
        "evaluation started"
    );
    let job = &job;
    // The server's log says how far a long evaluation is, at the pace of the clients' plain
    // progress lines (RFB_PROGRESS_SECONDS, default 15 s), not at every batch.
    let log_every = rfb_progress::interval_from_env();
    let mut last_logged = Instant::now();
    let in_process = runner.in_process();
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        // In-process the engine asks between attack iterations, which is the heartbeat; a
        // worker process is asked about every 50 ms, and its own signs of life are.
        let stop = || if in_process { job.stop_reason(queue) } else { job.stop_reason_quietly(queue) };
        let alive = || {
            queue.beat();
        };
        runner.run(&job.prepared, job.deadline, &stop, &alive, &mut |event| {
            if let Some(reason) = job.stop_reason(queue) {
                return Err(reason);
            }
            if let Event::Progress(p) = &event {
                if last_logged.elapsed() >= log_every {
                    last_logged = Instant::now();
                    tracing::info!(
                        model = %job.prepared.model,
                        attack = %p.attack,
                        component = %p.component,
                        done = p.examples_done,
                        of = p.examples_total,
                        seconds = started.elapsed().as_secs_f64().round(),
                        "evaluation progress"
                    );
                }
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
        Ok(result) => finish(job, result, seconds, &redactor),
        Err(payload) => {
            let error = EngineError::from_panic(payload.as_ref());
            tracing::error!(model = %job.prepared.model, %error, "evaluation panicked; models unloaded");
            runner.reset();
            job.fail_redacted(&error, &redactor);
        }
    }
}

/// Tells the client how its job ended.
fn finish(job: &Job, result: Result<(), EngineError>, seconds: f64, redactor: &PathRedactor) {
    let model = &job.prepared.model;
    match result {
        Ok(()) => {
            job.send(Event::Done(Done { elapsed_seconds: job.received.elapsed().as_secs_f64() }));
            tracing::info!(%model, seconds, "evaluation done");
        }
        Err(EngineError::Cancelled) => {
            tracing::info!(%model, client = %job.client, seconds, "evaluation cancelled by the client (it left or its connection died)");
        }
        Err(EngineError::DeadlineExceeded) => {
            tracing::info!(%model, seconds, "evaluation stopped: its deadline passed");
            job.fail(EngineError::DeadlineExceeded);
        }
        Err(error @ EngineError::Unavailable(_)) => {
            tracing::info!(%model, seconds, "evaluation stopped: the server is shutting down");
            job.fail(error);
        }
        Err(error) => {
            // The log keeps the server's paths; the client's message does not.
            tracing::warn!(%model, %error, "evaluation failed");
            job.fail_redacted(&error, redactor);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_with(clients: &[&str]) -> (QueueState, Vec<tokio::sync::mpsc::UnboundedReceiver<Result<EvaluateEvent, tonic::Status>>>) {
        let mut state = QueueState::default();
        let mut receivers = Vec::new();
        for client in clients {
            let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
            receivers.push(receiver);
            state.pending.push(Job::new(dummy_job(), sender, None, client.to_string()));
        }
        (state, receivers)
    }

    fn dummy_job() -> PreparedEvaluation {
        let manifest = rfb_core::checkpoint::Manifest {
            format_version: 1,
            model: rfb_core::models::ModelSpec::new("digits-cnn", 10, [1, 8, 8]),
            class_names: Vec::new(),
            dataset: "digits".into(),
            method: "natural".into(),
            hyperparameters: serde_json::Value::Null,
            seed: None,
            epoch: None,
            selection: None,
            weights_sha256: String::new(),
            parameter_count: 0,
            code_version: String::new(),
            libtorch_version: String::new(),
            created_at: String::new(),
            source: None,
        };
        PreparedEvaluation {
            model: "m".into(),
            model_dir: "m".into(),
            manifest,
            weights_sha256: String::new(),
            model_sha256: String::new(),
            dataset: rfb_core::data::DatasetKind::Digits,
            split: rfb_core::data::Split::Test,
            data_sha256: String::new(),
            class_counts: vec![1; 10],
            examples_per_class: 1,
            batch_size: 1,
            precision: rfb_proto::v1::Precision::Fp32,
            shard: None,
            attacks: Vec::new(),
        }
    }

    fn clients_in_order(state: &QueueState) -> Vec<String> {
        state.order().into_iter().map(|i| state.pending[i].client.clone()).collect()
    }

    #[test]
    fn clients_take_turns_and_a_new_client_is_not_starved() {
        // a submitted four jobs, then b one, then c two: turns a, b, c, a, c, a, a.
        let (state, _receivers) = state_with(&["a", "a", "a", "a", "b", "c", "c"]);
        assert_eq!(clients_in_order(&state), ["a", "b", "c", "a", "c", "a", "a"]);
        // a just had a job started: b and c go before a's next.
        let (mut state, _receivers) = state_with(&["a", "a", "b", "c"]);
        state.turn = 5;
        state.last_turn.insert("a".into(), 5);
        state.last_turn.insert("c".into(), 2);
        assert_eq!(clients_in_order(&state), ["b", "c", "a", "a"]);
        // One client alone: first come, first served.
        let (state, _receivers) = state_with(&["x", "x", "x"]);
        assert_eq!(state.order(), [0, 1, 2]);
    }

    #[test]
    fn the_queue_is_bounded_overall_and_per_client() {
        let queue = Queue::new(Limits { max_job_cost: 1, max_queue: 3, max_queue_per_client: 2 });
        let mut receivers = Vec::new();
        let submit = |client: &str| {
            let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
            let outcome = queue.submit(Job::new(dummy_job(), sender, None, client.into()));
            (outcome, receiver)
        };
        let mut submit = |client: &str| {
            let (outcome, receiver) = submit(client);
            receivers.push(receiver);
            outcome
        };
        assert!(submit("a").is_ok());
        assert!(submit("a").is_ok());
        let refused = submit("a").unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.to_string().contains("--max-queue-per-client 2"), "{refused}");
        assert!(submit("b").is_ok());
        let full = submit("c").unwrap_err();
        assert_eq!(full.code(), tonic::Code::ResourceExhausted);
        assert!(full.to_string().contains("--max-queue 3"), "{full}");
        // Positions: a, b, a.
        let positions: Vec<i64> = receivers
            .iter_mut()
            .map(|r| {
                let mut last = -1;
                while let Ok(Ok(event)) = r.try_recv() {
                    if let Some(Event::Queued(q)) = event.event {
                        last = q.ahead;
                    }
                }
                last
            })
            .collect();
        assert_eq!(positions, [0, 2, -1, 1, -1]);
        queue.shutdown();
        let status = receivers[0].try_recv().unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        let (sender, _receiver) = tokio::sync::mpsc::unbounded_channel();
        let late = queue.submit(Job::new(dummy_job(), sender, None, "d".into())).unwrap_err();
        assert_eq!(late.code(), tonic::Code::Unavailable);
    }

    #[test]
    fn health_sees_a_stuck_or_gone_worker() {
        let queue = Queue::new(Limits::default());
        let (release, released) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let _ = released.recv();
        });
        let idle = Worker { queue: queue.clone(), handle: Mutex::new(Some(thread)) };
        assert_eq!(idle.state(Duration::from_secs(60)), WorkerState::Idle);
        queue.busy.store(true, Ordering::Relaxed);
        queue.beat();
        assert_eq!(idle.state(Duration::from_secs(60)), WorkerState::Busy);
        std::thread::sleep(Duration::from_millis(60));
        let stuck = idle.state(Duration::from_millis(20));
        assert!(matches!(stuck, WorkerState::Stuck(_)) && !stuck.serving(), "{stuck:?}");
        queue.beat();
        assert!(idle.state(Duration::from_secs(60)).serving());
        drop(release);
        let started = Instant::now();
        while !idle.is_finished() && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(idle.state(Duration::from_secs(60)), WorkerState::Gone);
        assert!(!WorkerState::Gone.serving());
    }

    #[test]
    fn a_poisoned_lock_does_not_stop_the_queue() {
        let queue = Queue::new(Limits::default());
        let poisoner = queue.clone();
        let _ = std::thread::spawn(move || {
            let _guard = poisoner.state.lock();
            panic!("poison the queue lock");
        })
        .join();
        assert!(queue.state.is_poisoned());
        let (sender, _receiver) = tokio::sync::mpsc::unbounded_channel();
        assert!(queue.submit(Job::new(dummy_job(), sender, None, "a".into())).is_ok());
        assert_eq!(queue.waiting(), 1);
        queue.refresh();
        queue.shutdown();
        assert_eq!(queue.waiting(), 0);
    }
}
