//! Child processes (etcdutl, kubeadm, kubectl, the package manager): found on PATH, run to
//! completion within a deadline, and killed with everything they started when it passes.
//!
//! A timed-out `apt-get` leaves `dpkg` behind holding the package lock if only the direct
//! child is killed, so every command runs in a process group of its own and the whole group
//! is killed.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("`{command}` could not start: {source}")]
    Start {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` did not finish within {}s and was killed (with every process it started)", .timeout.as_secs())]
    TimedOut { command: String, timeout: Duration },
    #[error("`{command}` failed ({status}): {last_stderr_line}")]
    Failed {
        command: String,
        status: ExitStatus,
        last_stderr_line: String,
    },
    #[error("`{command}`: waiting for it failed: {source}")]
    Wait {
        command: String,
        #[source]
        source: std::io::Error,
    },
}

/// The first executable called `name` on PATH.
pub fn on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The last non-empty line of a tool's stderr: where Go tools put the error.
pub fn last_line(stderr: &str) -> String {
    stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .to_string()
}

/// Runs `argv` with `env` added, stdin closed, to completion within `timeout`; returns its
/// stdout. On timeout the process group (the command and its children) is killed.
///
/// # Errors
/// It cannot start, times out, or exits non-zero (its last stderr line in the message).
pub fn run(
    argv: &[String],
    env: &[(&str, &str)],
    timeout: Duration,
) -> Result<String, ProcessError> {
    let command = argv.join(" ");
    let (program, args) = argv.split_first().ok_or_else(|| ProcessError::Start {
        command: command.clone(),
        source: std::io::Error::other("empty command line"),
    })?;
    let mut child = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|source| ProcessError::Start {
            command: command.clone(),
            source,
        })?;
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let out_reader = std::thread::spawn(move || read_all(stdout));
    let err_reader = std::thread::spawn(move || read_all(stderr));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) => {}
            Err(source) => return Err(ProcessError::Wait { command, source }),
        }
        if Instant::now() >= deadline {
            kill_group(child.id());
            let _ = child.wait();
            return Err(ProcessError::TimedOut { command, timeout });
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    if !status.success() {
        return Err(ProcessError::Failed {
            command,
            status,
            last_stderr_line: last_line(&stderr),
        });
    }
    Ok(stdout)
}

/// SIGKILL to the whole group the child leads (it was started with `process_group(0)`).
fn kill_group(pid: u32) {
    if let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

fn read_all(r: Option<impl Read>) -> String {
    let mut s = String::new();
    if let Some(mut r) = r {
        let _ = r.read_to_string(&mut s);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    #[test]
    fn stdout_comes_back_and_failures_carry_the_last_stderr_line() {
        assert_eq!(
            run(&sh("echo hi"), &[], Duration::from_secs(10)).unwrap(),
            "hi\n"
        );
        let err = run(
            &sh("echo one >&2; echo two >&2; exit 3"),
            &[],
            Duration::from_secs(10),
        )
        .unwrap_err();
        assert!(err.to_string().ends_with(": two"), "{err}");
    }

    #[test]
    fn the_environment_is_passed() {
        let out = run(&sh("echo $X"), &[("X", "y")], Duration::from_secs(10)).unwrap();
        assert_eq!(out, "y\n");
    }

    /// Regression: only the direct child was killed on timeout; a grandchild (dpkg under
    /// apt-get) lived on holding its lock.
    #[test]
    fn a_timeout_kills_the_children_of_the_command_too() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild.pid");
        let script = format!("sleep 60 & echo $! > {}; wait", pidfile.display());
        let err = run(&sh(&script), &[], Duration::from_millis(500)).unwrap_err();
        assert!(matches!(err, ProcessError::TimedOut { .. }), "{err}");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let alive = |pid: i32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
        };
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!alive(pid), "the grandchild {pid} survived the timeout");
    }

    #[test]
    fn programs_are_found_on_path() {
        assert!(on_path("sh").is_some());
        assert!(on_path("no-such-program-lifeboat").is_none());
        assert_eq!(last_line("a\nb\n\n  \n"), "b");
    }
}
