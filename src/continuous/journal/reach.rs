//! What one cluster's journal can restore: its chains with the trusted full backup each starts
//! from, the ranges that gives, and the refusals that name them.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::super::chain::ChainListing;
use super::super::ContinuousError;
use crate::catalog::Manifest;

/// One restorable range: a chain from its base backup to its newest durable revision.
#[derive(Debug, Clone, Serialize)]
pub struct Coverage {
    pub chain: String,
    pub from_rev: i64,
    pub from_time: DateTime<Utc>,
    pub to_rev: i64,
    pub to_time: DateTime<Utc>,
}

/// A chain a restore can start: its names, the oldest trusted full backup it continues, and
/// the range that gives.
#[derive(Debug, Clone)]
pub struct RestorableChain {
    pub listing: ChainListing,
    pub base: Manifest,
    pub coverage: Coverage,
}

/// What one cluster's journal can restore: its trusted backups and its restorable chains,
/// oldest first.
#[derive(Debug, Clone)]
pub struct Reach {
    pub cluster: u64,
    pub backups: Vec<Manifest>,
    pub chains: Vec<RestorableChain>,
}

/// The newest chain of a cluster and its newest durable revision (what a follower follows).
#[derive(Debug, Clone)]
pub struct NewestChain {
    pub chain: String,
    pub cluster: u64,
    pub to_rev: i64,
}

impl Reach {
    pub fn coverage(&self) -> Vec<Coverage> {
        self.chains.iter().map(|c| c.coverage.clone()).collect()
    }

    /// Every restorable range, for a refusal's message.
    pub fn describe(&self) -> String {
        describe(&self.coverage())
    }

    /// A refusal of `target`, naming every range that could be restored instead.
    pub fn not_covered(
        &self,
        target: impl Into<String>,
        why: impl Into<String>,
    ) -> ContinuousError {
        ContinuousError::NotCovered {
            target: target.into(),
            why: why.into(),
            coverage: self.describe(),
        }
    }

    /// The chain with the newest base at or before `rev` that reaches it.
    pub fn reaching(&self, rev: i64) -> Option<&RestorableChain> {
        self.chains
            .iter()
            .rev()
            .find(|c| c.coverage.from_rev <= rev && rev <= c.coverage.to_rev)
    }

    /// The chain with the newest base that covers the time `at`.
    pub fn covering(&self, at: DateTime<Utc>) -> Option<&RestorableChain> {
        self.chains
            .iter()
            .rev()
            .find(|c| c.coverage.from_time <= at && at <= c.coverage.to_time)
    }

    /// The newest restorable chain.
    ///
    /// # Errors
    /// `NotCovered` when no chain has a trusted base.
    pub fn newest(&self) -> Result<NewestChain, ContinuousError> {
        self.chains
            .last()
            .map(|c| NewestChain {
                chain: c.coverage.chain.clone(),
                cluster: self.cluster,
                to_rev: c.coverage.to_rev,
            })
            .ok_or_else(|| {
                self.not_covered(
                    "the newest revision",
                    "no journal chain has a trusted base backup",
                )
            })
    }
}

fn describe(coverage: &[Coverage]) -> String {
    if coverage.is_empty() {
        return "nothing (no journal chain with a trusted base backup)".into();
    }
    coverage
        .iter()
        .map(|c| {
            format!(
                "revisions {}–{} ({} – {})",
                c.from_rev,
                c.to_rev,
                c.from_time
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                c.to_time
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}
