//! The restore journal: the plan and how far it got, rewritten atomically after every step so a
//! crash or `kill -9` at any point leaves a file that says exactly what to resume or undo.
//!
//! `<state-dir>/restore/journal.json` exists exactly while a restore is unfinished; a finished
//! or rolled-back run's journal is moved into its run folder for the record. The file, its
//! durability and the run lock are `fsutil::JournalFile`'s.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Plan, RestoreError, Step};
use crate::fsutil::{JournalFile, RunLock};

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

/// Where journals live: `<state-dir>/restore/`, one run folder per run beside the journal.
#[derive(Debug, Clone)]
pub struct JournalDir {
    file: JournalFile,
}

impl JournalDir {
    /// Refuses a new run while one is unfinished, naming it and how `lifeboat <command>`
    /// finishes or undoes it (`restore` and `recover` share the journal).
    ///
    /// # Errors
    /// `Refused` when a journal is there; the journal cannot be read.
    pub fn refuse_unfinished(&self, command: &str) -> Result<(), RestoreError> {
        let Some(j) = self.load()? else {
            return Ok(());
        };
        Err(RestoreError::refused(format!(
            "an unfinished restore (run {}, backup {}, stopped in step {}) has its journal at {}: finish it with `lifeboat {command} --resume` or undo it with `lifeboat {command} --rollback`",
            j.plan.run_id,
            j.plan.backup.id,
            j.interrupted_step().or(j.next_step()).map_or("none", Step::name),
            self.path().display()
        )))
    }

    pub fn new(state_dir: &Path) -> JournalDir {
        JournalDir {
            file: JournalFile::new(state_dir.join("restore"), "restore"),
        }
    }

    pub fn dir(&self) -> &Path {
        self.file.dir()
    }

    pub fn path(&self) -> PathBuf {
        self.file.path()
    }

    pub fn run_dir(&self, run_id: &str) -> PathBuf {
        self.file.dir().join(run_id)
    }

    /// The unfinished journal, if there is one.
    ///
    /// # Errors
    /// The file exists but cannot be read or parsed (never silently ignored: it guards a
    /// node), or was written by another journal version.
    pub fn load(&self) -> Result<Option<Journal>, RestoreError> {
        let Some(journal) = self.file.load::<Journal>()? else {
            return Ok(None);
        };
        if journal.version != JOURNAL_VERSION {
            return Err(RestoreError::refused(format!(
                "the journal {} has version {}, not {JOURNAL_VERSION}: finish it with the lifeboat version that wrote it",
                self.path().display(),
                journal.version
            )));
        }
        Ok(Some(journal))
    }

    /// # Errors
    /// The state dir cannot be written.
    pub fn save(&self, journal: &Journal) -> Result<(), RestoreError> {
        Ok(self.file.save(journal)?)
    }

    /// Moves the journal of an ended run into its run folder, so a new restore may start.
    ///
    /// # Errors
    /// The state dir cannot be written.
    pub fn close(&self, journal: &Journal) -> Result<(), RestoreError> {
        let to = self.run_dir(&journal.plan.run_id).join("journal.json");
        Ok(self.file.archive(journal, &to)?)
    }

    /// Drops the journal of a run that changed nothing (its fetch failed).
    pub fn discard(&self, run_id: &str) {
        self.file.discard();
        let _ = std::fs::remove_dir_all(self.run_dir(run_id));
    }

    /// The run lock, so two restores on one node cannot interleave.
    ///
    /// # Errors
    /// Another restore holds it, or the folder cannot be created.
    pub fn lock(&self) -> Result<RunLock, RestoreError> {
        Ok(self.file.lock()?)
    }
}
