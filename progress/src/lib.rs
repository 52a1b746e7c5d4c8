//! Progress of long work (training epochs, evaluations, comparisons), shown the right way for
//! wherever stderr goes:
//!
//! - on a terminal: indicatif bars, redrawn in place;
//! - anywhere else (a log file, a pipe, CI): one plain line per unfinished task at a steady pace
//!   (every 15 s by default) saying what, how far and about how long is left, and one line when
//!   a task finishes. Nothing is redrawn, so a log stays readable and small.
//!
//! `RFB_PROGRESS=bars|lines|off` overrides the choice; `RFB_PROGRESS_SECONDS` sets the pace of
//! the lines. The trainer, `evaluator eval` and `bench-client compare` all report through this
//! crate.
//!
//! ```
//! use rfb_progress::{Mode, Progress};
//! let progress = Progress::new(Mode::Off);
//! let task = progress.task("absld seed 0", 180, "batches");
//! for _ in 0..180 {
//!     task.inc(1);
//! }
//! task.finish();
//! ```

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Pace of the plain lines unless `RFB_PROGRESS_SECONDS` says otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(15);

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// Nothing (`--quiet`).
    Off,
    /// indicatif bars on stderr (a terminal).
    Bars,
    /// A plain line per unfinished task every `every`, and one when a task finishes.
    Lines { every: Duration },
}

impl Mode {
    /// `quiet` turns progress off; otherwise `RFB_PROGRESS` (`bars`, `lines`, `off`) decides,
    /// else bars when stderr is a terminal and lines when it is not. The lines come every
    /// `RFB_PROGRESS_SECONDS` seconds (default 15).
    pub fn detect(quiet: bool) -> Mode {
        Mode::choose(quiet, std::env::var("RFB_PROGRESS").ok().as_deref(), std::io::stderr().is_terminal(), interval_from_env())
    }

    /// The decision of [`Mode::detect`] from its inputs.
    pub fn choose(quiet: bool, requested: Option<&str>, terminal: bool, every: Duration) -> Mode {
        if quiet {
            return Mode::Off;
        }
        match requested.map(str::trim) {
            Some("off") => Mode::Off,
            Some("bars") => Mode::Bars,
            Some("lines") => Mode::Lines { every },
            _ if terminal => Mode::Bars,
            _ => Mode::Lines { every },
        }
    }
}

/// The pace of plain lines: `RFB_PROGRESS_SECONDS`, else [`DEFAULT_INTERVAL`]. For logs that
/// report progress their own way (the evaluator's server log) at the same pace.
pub fn interval_from_env() -> Duration {
    std::env::var("RFB_PROGRESS_SECONDS").ok().as_deref().and_then(parse_seconds).unwrap_or(DEFAULT_INTERVAL)
}

fn parse_seconds(text: &str) -> Option<Duration> {
    let seconds: f64 = text.trim().parse().ok()?;
    (seconds.is_finite() && seconds > 0.0 && seconds < 1e9).then(|| Duration::from_secs_f64(seconds))
}

type Writer = Box<dyn Write + Send>;

/// What one task has done, for the plain lines.
#[derive(Debug, Clone)]
struct TaskState {
    name: String,
    unit: String,
    position: u64,
    total: u64,
    message: String,
    started: Instant,
    /// Start of the current stretch of `total` (a new total or a position going back starts
    /// another), from which the time left is estimated.
    stretch_started: Instant,
    stretch_start_position: u64,
}

struct Shared {
    out: Mutex<Writer>,
    tasks: Mutex<Vec<(u64, TaskState)>>,
    next_id: Mutex<u64>,
    stopped: Mutex<bool>,
    wake: Condvar,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn write_line(&self, line: &str) {
        let mut out = lock(&self.out);
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    fn update(&self, id: u64, change: impl FnOnce(&mut TaskState)) {
        if let Some((_, state)) = lock(&self.tasks).iter_mut().find(|(i, _)| *i == id) {
            change(state);
        }
    }

    fn remove(&self, id: u64) -> Option<TaskState> {
        let mut tasks = lock(&self.tasks);
        let index = tasks.iter().position(|(i, _)| *i == id)?;
        Some(tasks.remove(index).1)
    }
}

struct Ticker {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        *lock(&self.shared.stopped) = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn tick_loop(shared: Arc<Shared>, every: Duration) {
    let mut next = Instant::now() + every;
    loop {
        {
            let mut stopped = lock(&shared.stopped);
            loop {
                if *stopped {
                    return;
                }
                let now = Instant::now();
                if now >= next {
                    break;
                }
                stopped = shared.wake.wait_timeout(stopped, next - now).unwrap_or_else(|e| e.into_inner()).0;
            }
        }
        next += every;
        let now = Instant::now();
        if next < now {
            // Fell behind (a suspended process): keep the pace from here, no burst of lines.
            next = now + every;
        }
        let lines: Vec<String> = lock(&shared.tasks).iter().map(|(_, state)| progress_line(state, now)).collect();
        for line in lines {
            shared.write_line(&line);
        }
    }
}

/// Reports the progress of one command: a set of tasks shown together. Cloning gives another
/// handle to the same report.
#[derive(Clone)]
pub struct Progress {
    mode: Mode,
    multi: Option<MultiProgress>,
    shared: Arc<Shared>,
    _ticker: Option<Arc<Ticker>>,
}

impl Progress {
    /// Progress on stderr.
    pub fn new(mode: Mode) -> Progress {
        Progress::with_writer(mode, Box::new(std::io::stderr()))
    }

    /// Plain lines go to `out` (bars always draw on stderr).
    pub fn with_writer(mode: Mode, out: Box<dyn Write + Send>) -> Progress {
        let shared = Arc::new(Shared {
            out: Mutex::new(out),
            tasks: Mutex::new(Vec::new()),
            next_id: Mutex::new(0),
            stopped: Mutex::new(false),
            wake: Condvar::new(),
        });
        let (multi, ticker) = match mode {
            Mode::Off => (None, None),
            Mode::Bars => (Some(MultiProgress::with_draw_target(ProgressDrawTarget::stderr())), None),
            Mode::Lines { every } => {
                let for_thread = shared.clone();
                let thread = std::thread::Builder::new().name("rfb-progress".into()).spawn(move || tick_loop(for_thread, every)).ok();
                (None, Some(Arc::new(Ticker { shared: shared.clone(), thread })))
            }
        };
        Progress { mode, multi, shared, _ticker: ticker }
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// A task of `total` `unit`s (0: not known yet).
    pub fn task(&self, name: impl Into<String>, total: u64, unit: &str) -> Task {
        let name = name.into();
        let unit: String = unit.chars().filter(|c| *c != '{' && *c != '}').collect();
        let bar = match &self.multi {
            Some(multi) => {
                let bar = multi.add(ProgressBar::new(total));
                let template = format!("{{prefix}} [{{bar:30}}] {{pos}}/{{len}} {unit}  {{msg}}  {{elapsed}}, ETA {{eta}}");
                bar.set_style(
                    ProgressStyle::with_template(&template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> "),
                );
                bar.set_prefix(name.clone());
                bar
            }
            None => ProgressBar::hidden(),
        };
        let id = {
            let mut next = lock(&self.shared.next_id);
            *next += 1;
            *next
        };
        let lines = matches!(self.mode, Mode::Lines { .. });
        if lines {
            let now = Instant::now();
            let state = TaskState {
                name,
                unit,
                position: 0,
                total,
                message: String::new(),
                started: now,
                stretch_started: now,
                stretch_start_position: 0,
            };
            lock(&self.shared.tasks).push((id, state));
        }
        Task { bar, shared: self.shared.clone(), id, lines, done: false }
    }

    /// A line of output between the bars (a terminal) or in the log; nothing when off.
    pub fn println(&self, line: impl AsRef<str>) {
        match (&self.multi, self.mode) {
            (Some(multi), _) => {
                let _ = multi.println(line.as_ref());
            }
            (None, Mode::Lines { .. }) => self.shared.write_line(line.as_ref()),
            _ => {}
        }
    }

    /// A message that must be seen even with progress off (warnings, errors): printed between
    /// the bars when there are any, else straight to stderr.
    pub fn eprintln(&self, line: impl AsRef<str>) {
        match (&self.multi, self.mode) {
            (Some(multi), _) => multi.suspend(|| eprintln!("{}", line.as_ref())),
            (None, Mode::Lines { .. }) => self.shared.write_line(line.as_ref()),
            _ => eprintln!("{}", line.as_ref()),
        }
    }
}

/// One line of a [`Progress`]: a bar on a terminal, a plain line in a log.
pub struct Task {
    bar: ProgressBar,
    shared: Arc<Shared>,
    id: u64,
    lines: bool,
    done: bool,
}

impl Task {
    pub fn set_total(&self, total: u64) {
        self.bar.set_length(total);
        if self.lines {
            self.shared.update(self.id, |s| {
                if s.total != total {
                    s.total = total;
                    s.stretch_started = Instant::now();
                    s.stretch_start_position = s.position;
                }
            });
        }
    }

    pub fn set_position(&self, position: u64) {
        self.bar.set_position(position);
        if self.lines {
            self.shared.update(self.id, |s| {
                if position < s.position {
                    s.stretch_started = Instant::now();
                    s.stretch_start_position = position;
                }
                s.position = position;
            });
        }
    }

    pub fn inc(&self, delta: u64) {
        self.bar.inc(delta);
        if self.lines {
            self.shared.update(self.id, |s| s.position += delta);
        }
    }

    /// What the task is doing now, shown after the count.
    pub fn set_message(&self, message: impl Into<String>) {
        let message = message.into();
        if self.lines {
            self.shared.update(self.id, |s| s.message = message.clone());
        }
        self.bar.set_message(message);
    }

    /// Done: the bar goes away; in a log, one line says so and how long it took.
    pub fn finish(mut self) {
        self.done = true;
        self.bar.finish_and_clear();
        if let Some(state) = self.shared.remove(self.id) {
            self.shared.write_line(&finished_line(&state, Instant::now()));
        }
    }

    /// Stopped before the end (an error): no completion line.
    pub fn abandon(mut self) {
        self.done = true;
        self.bar.abandon();
        self.shared.remove(self.id);
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        if !self.done {
            self.bar.finish_and_clear();
            self.shared.remove(self.id);
        }
    }
}

/// `42s`, `3m 05s`, `1h 02m`.
pub fn format_duration(duration: Duration) -> String {
    let seconds = duration.as_secs_f64().round() as u64;
    if seconds < 60 {
        format!("{seconds}s")
    } else if seconds < 3600 {
        format!("{}m {:02}s", seconds / 60, seconds % 60)
    } else {
        format!("{}h {:02}m", seconds / 3600, (seconds % 3600) / 60)
    }
}

/// The time left at the rate of the current stretch, once there is one.
fn time_left(state: &TaskState, now: Instant) -> Option<Duration> {
    let done = state.position.saturating_sub(state.stretch_start_position);
    if state.total == 0 || done == 0 || state.position >= state.total {
        return None;
    }
    let per_unit = now.saturating_duration_since(state.stretch_started).as_secs_f64() / done as f64;
    Some(Duration::from_secs_f64(per_unit * (state.total - state.position) as f64))
}

fn progress_line(state: &TaskState, now: Instant) -> String {
    let mut line = format!("{}: ", state.name);
    if let Some(percent) = (100 * state.position.min(state.total)).checked_div(state.total) {
        line.push_str(&format!("{}/{} {} ({percent}%)", state.position, state.total, state.unit));
    } else {
        line.push_str(&format!("{} {}", state.position, state.unit));
    }
    if !state.message.is_empty() {
        line.push_str(&format!(", {}", state.message));
    }
    line.push_str(&format!("; {} elapsed", format_duration(now.saturating_duration_since(state.started))));
    match time_left(state, now) {
        Some(left) => line.push_str(&format!(", about {} left", format_duration(left))),
        None if state.total > 0 && state.position < state.total => line.push_str(", time left not known yet"),
        None => {}
    }
    line
}

fn finished_line(state: &TaskState, now: Instant) -> String {
    let mut line = format!("{}: done, {} {}", state.name, state.position, state.unit);
    if !state.message.is_empty() {
        line.push_str(&format!(", {}", state.message));
    }
    line.push_str(&format!(", in {}", format_duration(now.saturating_duration_since(state.started))));
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose output the test can read.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8_lossy(&lock(&self.0)).into_owned()
        }
    }

    fn state(position: u64, total: u64, seconds: u64, message: &str) -> (TaskState, Instant) {
        let started = Instant::now();
        let state = TaskState {
            name: "absld seed 0".into(),
            unit: "batches".into(),
            position,
            total,
            message: message.into(),
            started,
            stretch_started: started,
            stretch_start_position: 0,
        };
        (state, started + Duration::from_secs(seconds))
    }

    #[test]
    fn lines_say_what_how_far_and_how_long_is_left() {
        let (s, now) = state(60, 180, 30, "epoch 7/20 loss 0.5210");
        assert_eq!(progress_line(&s, now), "absld seed 0: 60/180 batches (33%), epoch 7/20 loss 0.5210; 30s elapsed, about 1m 00s left");
        let (s, now) = state(0, 180, 5, "");
        assert_eq!(progress_line(&s, now), "absld seed 0: 0/180 batches (0%); 5s elapsed, time left not known yet");
        let (s, now) = state(7, 0, 4000, "");
        assert_eq!(progress_line(&s, now), "absld seed 0: 7 batches; 1h 06m elapsed");
        let (s, now) = state(180, 180, 95, "epoch 20/20");
        assert_eq!(finished_line(&s, now), "absld seed 0: done, 180 batches, epoch 20/20, in 1m 35s");
    }

    #[test]
    fn the_time_left_follows_the_current_stretch() {
        // 100 examples of a new attack, 20 done in the 10 s since it started: 40 s left, whatever
        // the earlier attacks took.
        let (mut s, _) = state(20, 100, 0, "");
        s.started -= Duration::from_secs(600);
        s.stretch_started = Instant::now();
        let now = s.stretch_started + Duration::from_secs(10);
        assert_eq!(time_left(&s, now), Some(Duration::from_secs(40)));
    }

    #[test]
    fn modes_follow_quiet_the_environment_and_the_terminal() {
        let every = Duration::from_secs(15);
        assert_eq!(Mode::choose(true, Some("lines"), false, every), Mode::Off);
        assert_eq!(Mode::choose(false, None, true, every), Mode::Bars);
        assert_eq!(Mode::choose(false, None, false, every), Mode::Lines { every });
        assert_eq!(Mode::choose(false, Some("lines"), true, every), Mode::Lines { every });
        assert_eq!(Mode::choose(false, Some("off"), true, every), Mode::Off);
        assert_eq!(Mode::choose(false, Some("bars"), false, every), Mode::Bars);
        assert_eq!(parse_seconds("2.5"), Some(Duration::from_millis(2500)));
        assert_eq!(parse_seconds("0"), None);
        assert_eq!(parse_seconds("soon"), None);
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(format_duration(Duration::from_millis(400)), "0s");
        assert_eq!(format_duration(Duration::from_secs(59)), "59s");
        assert_eq!(format_duration(Duration::from_secs(185)), "3m 05s");
        assert_eq!(format_duration(Duration::from_secs(3720)), "1h 02m");
    }

    #[test]
    fn a_log_gets_lines_at_a_steady_pace_and_one_at_the_end() {
        let out = Captured::default();
        let progress = Progress::with_writer(Mode::Lines { every: Duration::from_millis(50) }, Box::new(out.clone()));
        let task = progress.task("evaluation", 10, "examples");
        task.set_position(4);
        task.set_message("PGD-20");
        // The ticker writes on its own, while the work does not call in.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !out.text().contains("evaluation: 4/10 examples (40%), PGD-20;") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(out.text().contains("evaluation: 4/10 examples (40%), PGD-20;"), "{}", out.text());
        progress.println("PGD-20: 61.00% average");
        task.set_position(10);
        task.finish();
        let text = out.text();
        assert!(text.contains("PGD-20: 61.00% average\n"), "{text}");
        assert!(text.contains("evaluation: done, 10 examples, PGD-20, in "), "{text}");
        // Nothing about a finished task afterwards.
        let lines = text.lines().count();
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(out.text().lines().count(), lines, "{}", out.text());
    }

    #[test]
    fn no_flooding_between_ticks_and_nothing_when_off() {
        let out = Captured::default();
        let progress = Progress::with_writer(Mode::Lines { every: Duration::from_secs(3600) }, Box::new(out.clone()));
        let task = progress.task("training", 1000, "batches");
        for _ in 0..1000 {
            task.inc(1);
            task.set_message("epoch 1/1");
        }
        task.finish();
        let text = out.text();
        assert_eq!(text.lines().count(), 1, "only the completion line: {text}");
        assert!(text.starts_with("training: done, 1000 batches"), "{text}");

        let off = Captured::default();
        let progress = Progress::with_writer(Mode::Off, Box::new(off.clone()));
        let task = progress.task("training", 10, "batches");
        task.inc(10);
        progress.println("epoch 1");
        task.finish();
        assert_eq!(off.text(), "");
    }

    #[test]
    fn an_abandoned_task_says_nothing_more() {
        let out = Captured::default();
        let progress = Progress::with_writer(Mode::Lines { every: Duration::from_secs(3600) }, Box::new(out.clone()));
        let task = progress.task("training", 10, "batches");
        task.inc(3);
        task.abandon();
        let dropped = progress.task("other", 10, "batches");
        drop(dropped);
        drop(progress);
        assert_eq!(out.text(), "");
    }
}
