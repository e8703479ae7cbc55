//! The application's processes (`faults-app`): relays, consumers and the writer, each with
//! its own log file; signals (kill -9, SIGTERM); peak resident memory from `/proc`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// What a process does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Relay,
    Consumer,
    Writer,
}

/// One running (or finished) process of the application.
pub struct App {
    /// e.g. `relay-a`, `consumer-b#2` (the second start of consumer b).
    pub name: String,
    pub role: Role,
    child: Child,
    pub log: PathBuf,
    /// Highest `VmHWM` (peak resident set) seen, in KiB.
    pub peak_rss_kib: u64,
    exit: Option<ExitStatus>,
    /// Killed or stopped on purpose: an exit is expected.
    pub stopped: bool,
}

/// How to start the application: its binary and the environment every process shares.
#[derive(Clone)]
pub struct Launcher {
    pub dir: PathBuf,
    pub env: Vec<(String, String)>,
}

impl Launcher {
    /// Starts `faults-app args…` with the shared environment plus `env`; output goes to
    /// `<dir>/<name>.log`.
    pub fn spawn(&self, name: &str, role: Role, args: &[&str], env: &[(&str, String)]) -> App {
        let log = self.dir.join(format!("{}.log", name.replace('#', "-")));
        let out = File::create(&log).expect("creating a process log");
        let err = out.try_clone().expect("cloning a log handle");
        let mut command = Command::new(env!("CARGO_BIN_EXE_faults-app"));
        command.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        for (key, _) in std::env::vars() {
            if key.starts_with("DIONYSUS_") || key == "DATABASE_URL" || key == "RUST_LOG" {
                command.env_remove(key);
            }
        }
        command.env(
            "RUST_LOG",
            std::env::var("FAULTS_LOG").unwrap_or_else(|_| "info,librdkafka=warn,rdkafka=warn".to_owned()),
        );
        command.env("FAULTS_PARENT_PID", std::process::id().to_string());
        for (key, value) in &self.env {
            command.env(key, value);
        }
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn().expect("starting faults-app");
        App { name: name.to_owned(), role, child, log, peak_rss_kib: 0, exit: None, stopped: false }
    }
}

impl App {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Updates the peak memory; returns the exit status once it exited.
    pub fn poll(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.sample();
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exit = Some(status);
            }
        }
        self.exit
    }

    fn sample(&mut self) {
        if let Some(kib) = peak_rss_kib(self.child.id()) {
            self.peak_rss_kib = self.peak_rss_kib.max(kib);
        }
    }

    /// kill -9: no shutdown, no goodbye to the broker or the database.
    pub fn kill(&mut self) {
        self.sample();
        self.stopped = true;
        let _ = self.child.kill();
        self.exit = self.child.wait().ok();
    }

    /// Sends SIGTERM without waiting.
    pub fn signal_terminate(&mut self) {
        self.sample();
        self.stopped = true;
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
    }

    /// Waits for the process to exit (after [`App::signal_terminate`]), kill -9 after `grace`.
    pub fn reap(&mut self, grace: Duration) {
        let deadline = std::time::Instant::now() + grace;
        while self.poll().is_none() {
            if std::time::Instant::now() >= deadline {
                self.kill();
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last `lines` lines of its log.
    pub fn tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `VmHWM` of a live process, in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
