//! One integration test binary (linked once), against real etcd 3.4 and 3.5 processes, the
//! real `age`/`zstd` CLIs and `etcdctl`/`etcdutl` as oracles. Run `scripts/test-deps` first
//! (the README's test command does).

mod capture;
mod cluster_restore;
mod connect;
mod continuous;
mod copy;
mod deploy;
mod docs;
mod drill;
mod etcd_versions;
mod failures;
mod hardening;
mod harness;
mod hashkv;
mod kit;
mod layers;
mod leases;
mod maintenance;
mod member;
mod object_lock;
mod rebuild;
mod recover;
mod restore;
mod retention;
mod s3_cli;
mod s3_faults;
mod save;
mod serve;
mod shadow;
mod signing;
mod status;
mod store_conformance;
mod stream_verify;
mod tamper;
mod upgrade;
mod upgrade_etcd;
mod zero_config;
