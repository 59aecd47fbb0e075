//! etcd-lifeboat: verified, encrypted, streaming etcd backups for kubeadm control planes.
//!
//! # Layout
//! Data flows one way: source → stages → store → catalog.
//! - [`etcd`]: the source — a client bound to one member; kubeadm discovery.
//! - [`stages`]: hash, compress (zstd), encrypt (age), and the pipe that joins a blocking
//!   stage thread to the async store.
//! - [`verify`]: the checks that make a snapshot count (trailer, native `snapshot status`,
//!   revision, offline HashKV), built on [`bbolt`], our read-only bbolt reader.
//! - [`store`]: storage backends behind the object-safe [`store::Store`] trait.
//! - [`catalog`]: manifests and backup ids; a backup exists once its manifest does.
//! - [`backup`]: one backup run end to end; [`readback`]: reading one back and re-checking it.
//! - [`restore`]: `lifeboat restore` — plan, journaled steps, resume, rollback; [`sandbox`]:
//!   the throwaway etcd of drills, point-in-time restores and the shadow; [`drill`]:
//!   restore drills in a sandbox; [`pitr`]: point-in-time restore (replay of the journal);
//!   [`shadow`]: a replica that follows the journal, proves it and cuts bases.
//! - [`member`]: `lifeboat member replace` — a dead member rejoins as a learner, promoted once
//!   caught up, without losing quorum.
//! - [`recover`]: `lifeboat recover` — quorum lost: the freshest survivor (or backup), topped
//!   up from the journal, restored as a new one-member cluster.
//! - [`upgrade`]: `lifeboat upgrade` — preflight, the backup gate, the journaled kubeadm steps.
//! - [`retention`]: which backups to keep (a pure plan from the catalog and a clock) and pruning.
//! - [`service`]: `lifeboat serve` — schedule, uploader election, health and metrics, shutdown.
//! - [`config`]: file + env + flags, validated once; [`progress`]: progress reporting;
//!   [`fsutil`]: durable renames and writes.
//! - [`exit`]: the documented exit codes, derived from the error chain.
//!
//! The library never prints; the `lifeboat` binary parses arguments, sets up logging and maps
//! errors to exit codes.

pub mod backup;
pub mod bbolt;
pub mod catalog;
pub mod config;
pub mod continuous;
pub mod copy;
pub mod drill;
pub mod error_chain;
pub mod etcd;
pub mod exit;
pub mod fsutil;
pub mod kit;
pub mod maintenance;
pub mod member;
pub mod pitr;
pub mod process;
pub mod progress;
pub mod readback;
pub mod recover;
pub mod restore;
pub mod retention;
pub mod sandbox;
pub mod secret;
pub mod service;
pub mod shadow;
pub mod stages;
pub mod store;
pub mod trust;
pub mod upgrade;
pub mod verify;
