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
    /// The post-flight (read-only): every member healthy (a leader, a linearizable read), in
    /// one cluster, on --etcd-version or newer, and HashKV equal on every member at one revision
    /// (etcd's corruption check). Waits up to --timeout; exit 4 when a member's data differs,
    /// 3 when the cluster is not healthy.
    Health(Box<EtcdHealthArgs>),
}

#[derive(Args, Debug)]
pub struct EtcdHealthArgs {
    #[command(flatten)]
    pub etcd: EtcdSection,
    /// Every member must run this etcd version or a newer one (e.g. 3.5.30).
    #[arg(long = "etcd-version", value_name = "VERSION")]
    pub etcd_version: Option<String>,
    /// How long the members may take to pass, e.g. 2m.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

impl EtcdHealthArgs {
    pub fn flags(&self) -> FileConfig {
        FileConfig {
            etcd: self.etcd.clone(),
            ..FileConfig::default()
        }
    }
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
