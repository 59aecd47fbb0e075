//! `lifeboat kit …`.

use clap::{Args, Subcommand};

use super::{DestArgs, Output};

#[derive(Subcommand, Debug)]
pub enum KitCommand {
    /// Every trusted kit: id, node, cluster, files.
    List(KitListArgs),
    /// One kit's files: path, mode, owner, size, digest (no identity needed).
    Show(KitShowArgs),
    /// Decrypt and check one kit, and write its files under a new folder.
    Get(KitGetArgs),
}

#[derive(Args, Debug)]
pub struct KitListArgs {
    #[command(flatten)]
    pub dest: DestArgs,
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Args, Debug)]
pub struct KitShowArgs {
    /// A kit id, or a unique prefix of one.
    pub id: String,
    #[command(flatten)]
    pub dest: DestArgs,
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Args, Debug)]
pub struct KitGetArgs {
    /// A kit id, or a unique prefix of one.
    pub id: String,
    #[command(flatten)]
    pub dest: DestArgs,
    /// age identity file of one of the kit's recipients.
    #[arg(long, short = 'i', env = "LIFEBOAT_IDENTITY", value_name = "KEYFILE")]
    pub identity: std::path::PathBuf,
    /// A new or empty folder: each file goes under it at its own path, private (0600, 0700).
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    pub out: std::path::PathBuf,
}
