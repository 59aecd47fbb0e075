//! `lifeboat etcd …`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::Output;
use lifeboat::config::{EtcdSection, FileConfig};

#[derive(Subcommand, Debug)]
pub enum EtcdCommand {
    /// The zombie-member check (read-only): the v3 store's membership (buckets `members` and
    /// `members_removed` of a snapshot streamed from the member, nothing on disk) against the
    /// live member list. etcd 3.6 trusts those buckets; exit 4 when they disagree.
    Check(Box<EtcdCheckArgs>),
}

#[derive(Args, Debug)]
pub struct EtcdCheckArgs {
    #[command(flatten)]
    pub etcd: EtcdSection,
    /// Read the buckets from this snapshot file instead of streaming one from the member (the
    /// live member list still comes from the cluster).
    #[arg(long, value_name = "FILE")]
    pub snapshot: Option<PathBuf>,
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

impl EtcdCheckArgs {
    pub fn flags(&self) -> FileConfig {
        FileConfig {
            etcd: self.etcd.clone(),
            ..FileConfig::default()
        }
    }
}
