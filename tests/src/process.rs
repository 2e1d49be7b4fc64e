//! A child process whose output is captured line by line (so tests can wait for
//! "listening on", and look for a trace id in the logs) and which is killed when
//! dropped.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Process {
    name: String,
    child: Child,
    output: Arc<Mutex<Vec<String>>>,
    /// A folder the process uses (a runtime's state), removed after it is stopped.
    scratch: Option<tempfile::TempDir>,
    /// Whether it was stopped and reaped (its pid, and group id, may be reused since).
    stopped: bool,
}

impl Process {
    pub fn start(name: &str, cmd: &mut Command) -> Process {
        // If the test binary dies without dropping us, take the child down too. The
        // child leads its own process group, so that stopping it also stops what it
        // started (`spin up` runs the app in a `spin trigger` child process).
        #[cfg(target_os = "linux")]
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::setpgid(0, 0);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("NO_COLOR", "1")
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let output = Arc::new(Mutex::new(Vec::new()));
        capture(child.stdout.take().expect("piped"), output.clone(), name);
        capture(child.stderr.take().expect("piped"), output.clone(), name);
        Process {
            name: name.to_string(),
            child,
            output,
            scratch: None,
            stopped: false,
        }
    }

    /// Its process id (for reading its memory from /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Every line the process has printed so far (stdout and stderr).
    pub fn output(&self) -> Vec<String> {
        self.output.lock().unwrap().clone()
    }

    /// Waits until a line satisfies `pred`, or panics with the output after `timeout`
    /// (or as soon as the process exits).
    pub fn wait_for_line(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.output().into_iter().find(|l| pred(l)) {
                return line;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "{} exited ({status}) before {what}:\n{}",
                    self.name,
                    self.output().join("\n")
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not print {what} within {timeout:?}:\n{}",
                    self.name,
                    self.output().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address from the process's "listening on http://ADDR" (inference) or
    /// "Serving http://ADDR" (edge-host, as `spin up` prints it) line.
    pub fn wait_for_listen_address(&mut self) -> String {
        const MARKERS: [&str; 2] = ["listening on http://", "Serving http://"];
        let line = self.wait_for_line("its listening address", Duration::from_secs(120), |l| {
            MARKERS.iter().any(|m| l.contains(m))
        });
        let marker = MARKERS.iter().find(|m| line.contains(*m)).expect("matched");
        let rest = &line[line.find(marker).expect("matched") + marker.len()..];
        rest.split(|c: char| c.is_whitespace() || c == '"' || c == '/')
            .next()
            .expect("an address")
            .to_string()
    }

    /// Removes `dir` once the process is stopped.
    pub fn keep_until_drop(&mut self, dir: tempfile::TempDir) {
        self.scratch = Some(dir);
    }

    /// Sends SIGTERM to the process alone (what Kubernetes and systemd send to stop it).
    pub fn terminate(&self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) with a positive pid signals that one process.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }

    /// The process's exit status once it has exited, waiting at most `within`.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let end = std::time::Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.stopped = true;
                return Some(status);
            }
            if std::time::Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the process and everything it started (SIGKILL to its process group)
    /// and waits for it.
    pub fn kill(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        #[cfg(target_os = "linux")]
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) with a negative pid signals that process group; the child
            // made itself a group leader before exec, so the group is its own.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        drop(self.scratch.take());
    }
}

fn capture(stream: impl Read + Send + 'static, sink: Arc<Mutex<Vec<String>>>, name: &str) {
    let name = name.to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if std::env::var_os("E2E_VERBOSE").is_some() {
                eprintln!("[{name}] {line}");
            }
            sink.lock().unwrap().push(line);
        }
    });
}
