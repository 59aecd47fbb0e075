//! `lifeboat defrag`.

use clap::Args;

use super::{Output, WriterArgs};
use lifeboat::config::{FileConfig, MaintenanceSection};

#[derive(Args, Debug)]
pub struct DefragArgs {
    /// The member, the destination and the recipients of the backup it may need first.
    #[command(flatten)]
    pub writer: WriterArgs,
    /// --fragmentation-ratio, --min-db-size, --max-backup-age.
    #[command(flatten)]
    pub maintenance: MaintenanceSection,
    /// Only this member (by name), whatever its fragmentation.
    #[arg(long, value_name = "NAME", conflicts_with = "all")]
    pub member: Option<String>,
    /// Every member, whatever its fragmentation.
    #[arg(long)]
    pub all: bool,
    /// Print the plan (members, order, expected reclaim, the backup behind it); change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Carry out the plan.
    #[arg(long)]
    pub yes: bool,
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

impl DefragArgs {
    pub fn flags(&self) -> FileConfig {
        FileConfig {
            maintenance: self.maintenance.clone(),
            ..self.writer.flags()
        }
    }
}
