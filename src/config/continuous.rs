//! `[continuous]`: continuous backup (the journal) in `serve`.

use std::time::Duration;

use serde::Deserialize;

use super::{duration, invalid, section, ConfigError};
use crate::continuous::{CaptureSettings, CheckpointPace};

section! {
    #[derive(clap::Args, Debug, Default, Clone, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ContinuousSection {
        /// Capture every revision into the journal (point-in-time restore), on the uploader.
        #[arg(
            long = "continuous",
            env = "LIFEBOAT_CONTINUOUS",
            num_args = 0..=1,
            require_equals = true,
            default_missing_value = "true",
            value_parser = clap::builder::FalseyValueParser::new()
        )]
        pub enabled: Option<bool>,
        #[arg(skip)]
        pub segment_interval: Option<String>,
        #[arg(skip)]
        pub segment_max_mib: Option<usize>,
        #[arg(skip)]
        pub checkpoint_interval: Option<String>,
        /// While no write arrives, how often the journal records (signed) that it is still
        /// caught up: the precision of a `--to-time` after the newest write.
        #[arg(skip)]
        pub heartbeat_interval: Option<String>,
        /// How far back point-in-time restore reaches (retention keeps what that needs).
        #[arg(skip)]
        pub keep: Option<String>,
    }
}

/// The capture settings when the journal is on; `None` when off.
///
/// # Errors
/// A bad value, naming its key.
pub fn resolve_continuous(c: &ContinuousSection) -> Result<Option<CaptureSettings>, ConfigError> {
    let d = CaptureSettings::default();
    let segment_interval = duration(
        "continuous.segment_interval",
        c.segment_interval.as_ref(),
        d.segment_interval,
    )?;
    if segment_interval > Duration::from_secs(60) {
        return Err(invalid(
            "continuous.segment_interval",
            "is longer than 60s: that much of the newest state could be lost with the node",
        ));
    }
    let segment_max_bytes = match c.segment_max_mib {
        None => d.segment_max_bytes,
        Some(n @ 1..=256) => n << 20,
        Some(n) => {
            return Err(invalid(
                "continuous.segment_max_mib",
                format!("{n} is outside 1..=256"),
            ))
        }
    };
    let checkpoint = match c.checkpoint_interval.as_deref() {
        None | Some("auto") => CheckpointPace::Auto,
        Some(_) => CheckpointPace::Every(duration(
            "continuous.checkpoint_interval",
            c.checkpoint_interval.as_ref(),
            Duration::ZERO,
        )?),
    };
    let head_interval = duration(
        "continuous.heartbeat_interval",
        c.heartbeat_interval.as_ref(),
        d.head_interval,
    )?;
    if head_interval < Duration::from_secs(1) {
        return Err(invalid(
            "continuous.heartbeat_interval",
            "is shorter than 1s: every beat replaces an object in the store",
        ));
    }
    if !c.enabled.unwrap_or(false) {
        return Ok(None);
    }
    Ok(Some(CaptureSettings {
        segment_interval,
        segment_max_bytes,
        checkpoint,
        head_interval,
        ..d
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_checked_even_when_off_and_name_their_key() {
        let bad = |c: ContinuousSection| resolve_continuous(&c).unwrap_err().to_string();
        assert!(bad(ContinuousSection {
            segment_interval: Some("5m".into()),
            ..Default::default()
        })
        .contains("continuous.segment_interval"));
        assert!(bad(ContinuousSection {
            segment_max_mib: Some(0),
            ..Default::default()
        })
        .contains("continuous.segment_max_mib"));
        assert!(bad(ContinuousSection {
            checkpoint_interval: Some("never".into()),
            ..Default::default()
        })
        .contains("continuous.checkpoint_interval"));
        assert!(bad(ContinuousSection {
            heartbeat_interval: Some("100ms".into()),
            ..Default::default()
        })
        .contains("continuous.heartbeat_interval"));
        assert!(resolve_continuous(&ContinuousSection::default())
            .unwrap()
            .is_none());
        let on = resolve_continuous(&ContinuousSection {
            enabled: Some(true),
            segment_interval: Some("500ms".into()),
            ..Default::default()
        })
        .unwrap()
        .unwrap();
        assert_eq!(on.segment_interval, Duration::from_millis(500));
        assert_eq!(on.checkpoint, CheckpointPace::Auto, "the default");
        let fixed = resolve_continuous(&ContinuousSection {
            enabled: Some(true),
            checkpoint_interval: Some("1m".into()),
            ..Default::default()
        })
        .unwrap()
        .unwrap();
        assert_eq!(
            fixed.checkpoint,
            CheckpointPace::Every(Duration::from_secs(60))
        );
    }
}
