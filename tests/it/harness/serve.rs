//! A `lifeboat serve` (or `shadow --listen`) process under test: started with its log in a
//! file, asked over HTTP, stopped by signal — killed by PID on Drop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, run_ok};

/// A running `lifeboat serve`, stopped with SIGTERM (or killed) by PID on Drop.
pub(crate) struct Serve {
    pub(crate) child: Child,
    pub metrics_url: String,
    log: std::path::PathBuf,
}

impl Serve {
    pub(crate) fn start(mut cmd: Command, log: std::path::PathBuf) -> Serve {
        let port = free_port();
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .arg(format!("--listen=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        let s = Serve {
            child,
            metrics_url: format!("http://127.0.0.1:{port}"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while s.get("/healthz").is_none() {
            assert!(
                Instant::now() < deadline,
                "serve never answered /healthz: {}",
                s.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        s
    }

    pub(crate) fn get(&self, path: &str) -> Option<(u16, String)> {
        let out = Command::new("curl")
            .args(["-s", "-m", "10", "-w", "\n%{http_code}"])
            .arg(format!("{}{path}", self.metrics_url))
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n')?;
        let code: u16 = code.trim().parse().ok()?;
        (code != 0).then(|| (code, body.to_string()))
    }

    pub(crate) fn metric(&self, name: &str) -> f64 {
        self.get("/metrics")
            .and_then(|(_, body)| {
                body.lines()
                    .find(|l| l.starts_with(&format!("{name} ")))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(f64::NAN)
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, as a node dying would: nothing is flushed.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and the exit code must be `code` (the log shows why not).
    pub(crate) fn stop_with(&mut self, code: i32) {
        let got = self.stop(Duration::from_secs(30));
        assert_eq!(got, code, "exit code; its log:\n{}", self.log_text());
    }

    /// SIGTERM, then wait; returns the exit code.
    pub(crate) fn stop(&mut self, within: Duration) -> i32 {
        run_ok(
            Command::new("kill")
                .arg("-TERM")
                .arg(self.child.id().to_string()),
        );
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "serve did not stop in {within:?}: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Serve {
    /// As `wait_until`, with this instance's log in the failure.
    pub(crate) fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&Serve) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while !f(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; its log:\n{}\nits metrics:\n{:?}",
                self.log_text(),
                self.get("/metrics")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
