//! `lifeboat copy`.

use std::path::PathBuf;

use clap::Args;

use super::{DestArgs, Output};
use lifeboat::config::{FileConfig, S3Section};

#[derive(Args, Debug)]
pub struct CopyArgs {
    /// The store copied from: --dest and its S3 flags, as every command has them.
    #[command(flatten)]
    pub dest: DestArgs,
    /// The store copied to: a folder or s3://BUCKET/PREFIX. With a `[[copy]]` of that
    /// destination in the config file, its settings apply; otherwise the --dest store's S3
    /// connection (without its lock). The --to-s3-* flags override either.
    #[arg(long, value_name = "DIR|s3://BUCKET/PREFIX")]
    pub to: String,
    #[arg(long, value_name = "URL")]
    pub to_s3_endpoint: Option<String>,
    #[arg(long, value_name = "REGION")]
    pub to_s3_region: Option<String>,
    #[arg(
        long,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    pub to_s3_path_style: Option<bool>,
    /// S3 Object Lock on every object written to the copy: governance or compliance.
    #[arg(long, value_name = "MODE")]
    pub to_s3_lock_mode: Option<String>,
    #[arg(long, value_name = "DURATION")]
    pub to_s3_lock_period: Option<String>,
    /// Files holding the copy's S3 access key and secret key (default: the AWS credential chain).
    #[arg(long, value_name = "FILE", requires = "to_s3_secret_key_file")]
    pub to_s3_access_key_file: Option<PathBuf>,
    #[arg(long, value_name = "FILE", requires = "to_s3_access_key_file")]
    pub to_s3_secret_key_file: Option<PathBuf>,
    /// Only backups taken, and journal segments ending, at or after this time (RFC 3339).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Say what would be copied (manifests checked); write nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(short = 'w', long = "write-out", value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

impl CopyArgs {
    pub fn flags(&self) -> FileConfig {
        self.dest.flags()
    }

    /// The --to-s3-* flags as an `[s3]` section, to lay over the target's own settings.
    pub fn to_s3(&self) -> S3Section {
        S3Section {
            endpoint: self.to_s3_endpoint.clone(),
            region: self.to_s3_region.clone(),
            path_style: self.to_s3_path_style,
            lock_mode: self.to_s3_lock_mode.clone(),
            lock_period: self.to_s3_lock_period.clone(),
            access_key_file: self.to_s3_access_key_file.clone(),
            secret_key_file: self.to_s3_secret_key_file.clone(),
            ..S3Section::default()
        }
    }
}
