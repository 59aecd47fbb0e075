//! `[shadow]`: the replica that follows the journal (`lifeboat shadow`). Its sandbox is the
//! drill's (`[drill]`); its bases are written like backups (`[backup]`) and signed with this
//! host's `trust.signing_key` — the shadow's own key, which readers add to their trusted keys.

use std::time::Duration;

use serde::Deserialize;

use super::{duration, invalid, resolve_backup, resolve_drill, section, ConfigError, FileConfig};
use crate::catalog::Reason;
use crate::shadow::ShadowSettings;

section! {
    #[derive(clap::Args, Debug, Default, Clone, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ShadowSection {
        /// `serve` runs the shadow too (only a drill-only instance: `serve.schedule = "off"`,
        /// off the control plane). `lifeboat shadow` runs it regardless.
        #[arg(skip)]
        pub enabled: Option<bool>,
        /// A base (full backup from the shadow) at the first checkpoint this long after the
        /// last one, e.g. "15m".
        #[arg(long, env = "LIFEBOAT_SHADOW_BASE_INTERVAL", value_name = "DURATION")]
        pub base_interval: Option<String>,
        /// How often to look for new journal segments, e.g. "1s".
        #[arg(long, env = "LIFEBOAT_SHADOW_POLL_INTERVAL", value_name = "DURATION")]
        pub poll_interval: Option<String>,
        /// Only this cluster's journal (hex cluster id, as `snapshot list` shows it): for a
        /// bucket shared by several clusters.
        #[arg(long, env = "LIFEBOAT_SHADOW_CLUSTER_ID", value_name = "ID")]
        pub cluster_id: Option<String>,
    }
}

/// How the shadow runs.
///
/// # Errors
/// A bad duration, sandbox or backup setting (naming the key); bases that readers could not
/// trust (no `trust.signing_key` while readers require signatures).
pub fn resolve_shadow(
    c: &FileConfig,
    until_revision: Option<i64>,
) -> Result<ShadowSettings, ConfigError> {
    let s = &c.shadow;
    let cluster = match &s.cluster_id {
        None => None,
        Some(raw) => Some(crate::catalog::parse_cluster_id(raw).ok_or_else(|| {
            invalid(
                "shadow.cluster_id",
                format!("`{raw}` is not a hex cluster id (as `snapshot list` shows it)"),
            )
        })?),
    };
    let base_interval = duration(
        "shadow.base_interval",
        s.base_interval.as_ref(),
        Duration::from_secs(15 * 60),
    )?;
    let poll_interval = duration(
        "shadow.poll_interval",
        s.poll_interval.as_ref(),
        Duration::from_secs(1),
    )?;
    if poll_interval.is_zero() || poll_interval > Duration::from_secs(600) {
        return Err(invalid(
            "shadow.poll_interval",
            "must be between 1ms and 10m",
        ));
    }
    let backup = resolve_backup(&c.backup, &c.trust, Reason::Shadow)?;
    if backup.signer.is_none() {
        return Err(invalid(
            "trust.signing_key",
            "the shadow signs its bases and proofs with its own key: generate one (`lifeboat signing-key generate`) and add its .pub to the readers' trust.trusted_shadow_keys",
        ));
    }
    Ok(ShadowSettings {
        sandbox: resolve_drill(c)?,
        base_interval,
        poll_interval,
        until_revision,
        cluster,
        backup,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> FileConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn bad_values_and_unsignable_bases_name_their_key() {
        let base = "[backup]\nrecipients = [\"age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p\"]\n";
        let unsigned = resolve_shadow(&config(base), None).unwrap_err();
        assert!(
            unsigned.to_string().contains("trust.signing_key"),
            "{unsigned}"
        );
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("shadow.key");
        crate::trust::generate(&key).unwrap();
        let signed = format!("{base}[trust]\nsigning_key = \"{}\"\n", key.display());
        let allowed = config(&signed);
        let s = resolve_shadow(&allowed, Some(7)).unwrap();
        assert_eq!(s.base_interval, Duration::from_secs(15 * 60));
        assert_eq!(s.poll_interval, Duration::from_secs(1));
        assert_eq!(s.until_revision, Some(7));
        assert_eq!(s.backup.reason, Reason::Shadow);
        let slow = config(&format!("{signed}[shadow]\npoll_interval = \"1h\"\n"));
        let e = resolve_shadow(&slow, None).unwrap_err();
        assert!(e.to_string().contains("shadow.poll_interval"), "{e}");
        let cluster = config(&format!("{signed}[shadow]\ncluster_id = \"nothex\"\n"));
        let e = resolve_shadow(&cluster, None).unwrap_err();
        assert!(e.to_string().contains("shadow.cluster_id"), "{e}");
    }
}
