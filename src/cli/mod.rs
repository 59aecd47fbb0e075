//! The CLI edge: logging, config loading, context on errors, exit codes.

mod args;
mod cluster;
mod copy;
mod defrag;
mod etcd;
mod journal;
mod keys;
mod kit;
mod member;
mod pitr;
mod progress;
mod prune;
mod rebuild;
mod recover;
mod render;
mod restore;
mod serve;
mod shadow;
mod snapshot;
mod upgrade;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use lifeboat::config::{FileConfig, DEFAULT_CONFIG_PATH};
use tracing_subscriber::EnvFilter;

use args::{Cli, Command, LogFormat};

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                lifeboat::exit::USAGE
            } else {
                0
            });
        }
    };
    let config = match load_config(cli.config.as_ref()) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    init_logging(&cli, &config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&anyhow::Error::new(e).context("starting the async runtime")),
    };
    match runtime.block_on(run(cli, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

async fn run(cli: Cli, config: FileConfig) -> Result<()> {
    match cli.command {
        Command::Snapshot(cmd) => snapshot::run(cmd, config).await,
        Command::Prune(args) => prune::run(args, config).await,
        Command::Member(cmd) => member::run(cmd, config).await,
        Command::Etcd(cmd) => etcd::run(cmd, config).await,
        Command::Defrag(args) => defrag::run(*args, config).await,
        Command::Copy(args) => copy::run(*args, config).await,
        Command::Recover(args) => recover::run(*args, config).await,
        Command::Kit(cmd) => kit::run(cmd, config).await,
        Command::Rebuild(args) => rebuild::run(*args, config).await,
        Command::Serve(args) => serve::run(*args, config).await,
        Command::Restore(args) => restore::run(*args, config).await,
        Command::Drill(args) => restore::drill(*args, config).await,
        Command::Upgrade(args) => upgrade::run(*args, config).await,
        Command::SigningKey(cmd) => keys::run(cmd),
        Command::Continuous(cmd) => journal::run(cmd, config).await,
        Command::Shadow(args) => shadow::run(*args, config).await,
    }
}

/// Cancels `token` on the first SIGINT or SIGTERM; a second one exits at once.
pub(crate) fn cancel_on_signals(token: tokio_util::sync::CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    tokio::spawn(async move {
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        tracing::warn!("signal received: stopping (a second signal exits at once)");
        token.cancel();
        tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
        std::process::exit(130);
    });
}

fn load_config(flag: Option<&PathBuf>) -> Result<FileConfig> {
    let (path, required) = match flag {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    };
    Ok(FileConfig::load(&path, required)?)
}

fn init_logging(cli: &Cli, config: &FileConfig) {
    let level = cli
        .log_level
        .clone()
        .or_else(|| config.log.level.clone())
        .unwrap_or_else(|| "info".into());
    // The scheduler crate logs its own life cycle at info; keep it to warnings.
    let filter = EnvFilter::try_new(format!("{level},tokio_cron_scheduler=warn"))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match cli.log_format {
        Some(f) => f == LogFormat::Json,
        None => config.log.format.as_deref() == Some("json"),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Prints the whole error chain on one line and picks the documented exit code. Our messages
/// already quote their cause, so a link whose text is already printed is left out.
fn fail(e: &anyhow::Error) -> ExitCode {
    let root: &(dyn std::error::Error + 'static) = e.as_ref();
    eprintln!("lifeboat: error: {}", lifeboat::error_chain::one_line(root));
    ExitCode::from(lifeboat::exit::code_for(root))
}
