//! The restore journal: the plan and how far it got, rewritten atomically after every step so a
//! crash or `kill -9` at any point leaves a file that says exactly what to resume or undo.
//!
//! `<state-dir>/restore/journal.json` exists exactly while a restore is unfinished; a finished
//! or rolled-back run's journal is moved into its run folder for the record.

use std::fs::File;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Plan, RestoreError, Step};
use crate::fsutil;

pub const JOURNAL_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    Running,
    Finished,
    RolledBack,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRecord {
    pub step: Step,
    pub started_at: DateTime<Utc>,
    pub done_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Journal {
    pub version: u32,
    pub state: RunState,
    pub plan: Plan,
    pub steps: Vec<StepRecord>,
}

impl Journal {
    pub fn new(plan: Plan) -> Journal {
        Journal {
            version: JOURNAL_VERSION,
            state: RunState::Running,
            plan,
            steps: Vec::new(),
        }
    }

    pub fn is_done(&self, step: Step) -> bool {
        self.steps
            .iter()
            .any(|r| r.step == step && r.done_at.is_some())
    }

    /// The step that was started and not finished, if the run stopped inside one.
    pub fn interrupted_step(&self) -> Option<Step> {
        self.steps
            .iter()
            .rev()
            .find(|r| r.done_at.is_none())
            .map(|r| r.step)
    }

    /// The first step not done yet, in plan order.
    pub fn next_step(&self) -> Option<Step> {
        Step::ALL.iter().copied().find(|s| !self.is_done(*s))
    }

    pub fn mark_started(&mut self, step: Step) {
        if !self
            .steps
            .iter()
            .any(|r| r.step == step && r.done_at.is_none())
        {
            self.steps.push(StepRecord {
                step,
                started_at: Utc::now(),
                done_at: None,
            });
        }
    }

    pub fn mark_done(&mut self, step: Step) {
        if let Some(r) = self
            .steps
            .iter_mut()
            .rev()
            .find(|r| r.step == step && r.done_at.is_none())
        {
            r.done_at = Some(Utc::now());
        }
    }
}

/// Where journals live: `<state-dir>/restore/`.
#[derive(Debug, Clone)]
pub struct JournalDir {
    dir: PathBuf,
}

impl JournalDir {
    pub fn new(state_dir: &Path) -> JournalDir {
        JournalDir {
            dir: state_dir.join("restore"),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join("journal.json")
    }

    pub fn run_dir(&self, run_id: &str) -> PathBuf {
        self.dir.join(run_id)
    }

    /// The unfinished journal, if there is one.
    ///
    /// # Errors
    /// The file exists but cannot be read or parsed (never silently ignored: it guards a node).
    pub fn load(&self) -> Result<Option<Journal>, RestoreError> {
        let path = self.path();
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(RestoreError::journal(&path, e.to_string())),
        };
        let journal: Journal = serde_json::from_slice(&text).map_err(|e| {
            RestoreError::journal(&path, format!("not a journal lifeboat can read: {e}"))
        })?;
        if journal.version != JOURNAL_VERSION {
            return Err(RestoreError::journal(
                &path,
                format!(
                    "journal version {} is not {JOURNAL_VERSION}: finish it with the lifeboat version that wrote it",
                    journal.version
                ),
            ));
        }
        Ok(Some(journal))
    }

    /// # Errors
    /// The state dir cannot be written.
    pub fn save(&self, journal: &Journal) -> Result<(), RestoreError> {
        let path = self.path();
        fsutil::create_private_dir(&self.dir)
            .map_err(|e| RestoreError::journal(&self.dir, e.to_string()))?;
        let json = serde_json::to_vec_pretty(journal)
            .map_err(|e| RestoreError::journal(&path, e.to_string()))?;
        fsutil::write_atomic(&path, &json).map_err(|e| RestoreError::journal(&path, e.to_string()))
    }

    /// Moves the journal of an ended run into its run folder, so a new restore may start.
    ///
    /// # Errors
    /// The state dir cannot be written.
    pub fn close(&self, journal: &Journal) -> Result<(), RestoreError> {
        self.save(journal)?;
        let run_dir = self.run_dir(&journal.plan.run_id);
        fsutil::create_private_dir(&run_dir)
            .map_err(|e| RestoreError::journal(&run_dir, e.to_string()))?;
        let to = run_dir.join("journal.json");
        fsutil::durable_rename(&self.path(), &to)
            .map_err(|e| RestoreError::journal(&to, e.to_string()))
    }

    /// An exclusive lock on the journal folder for the whole run, so two restores on one node
    /// cannot interleave (flock: released by the kernel if the process dies).
    ///
    /// # Errors
    /// Another restore holds it, or the folder cannot be created.
    pub fn lock(&self) -> Result<File, RestoreError> {
        fsutil::create_private_dir(&self.dir)
            .map_err(|e| RestoreError::journal(&self.dir, e.to_string()))?;
        let lock_path = self.dir.join(".lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| RestoreError::journal(&lock_path, e.to_string()))?;
        file.try_lock().map_err(|_| RestoreError::Refused {
            reason: format!(
                "another lifeboat restore is running on this node (it holds {}): wait for it, or check `ps`",
                lock_path.display()
            ),
        })?;
        Ok(file)
    }
}
