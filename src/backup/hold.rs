//! Test-only: hold a backup right before its commit until a file appears, so a test can pause
//! the process (SIGSTOP) at exactly that point and prove the commit is fenced. Nothing here
//! runs unless `LIFEBOAT_TEST_HOLD_BEFORE_COMMIT` names a file.

use std::time::Duration;

pub const HOLD_ENV: &str = "LIFEBOAT_TEST_HOLD_BEFORE_COMMIT";

pub(super) async fn before_commit() {
    let Some(release) = std::env::var_os(HOLD_ENV) else {
        return;
    };
    let release = std::path::PathBuf::from(release);
    tracing::warn!(release = %release.display(), "test hold before commit");
    while !release.exists() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
