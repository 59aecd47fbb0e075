//! The S3 server's clock against this node's (#21): journal times, backup ids and Object Lock
//! retention all come from the node's clock, while the server enforces locks and SigV4 by its
//! own. Every response's `Date` is compared with the local time; a difference over
//! [`MAX_SKEW`] is warned once per process (with both times), never an error: S3 itself refuses
//! signatures off by more than 15 minutes.

use std::sync::atomic::{AtomicBool, Ordering};

use aws_sdk_s3::config::interceptors::BeforeDeserializationInterceptorContextRef;
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_s3::error::BoxError;
use chrono::{DateTime, Utc};

/// The difference that is worth a warning.
const MAX_SKEW: chrono::Duration = chrono::Duration::seconds(30);

#[derive(Debug, Default)]
pub(super) struct ClockCheck {
    warned: AtomicBool,
}

impl Intercept for ClockCheck {
    fn name(&self) -> &'static str {
        "lifeboat-clock-check"
    }

    fn read_before_deserialization(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let server = context
            .response()
            .headers()
            .get("date")
            .and_then(|d| DateTime::parse_from_rfc2822(d).ok())
            .map(|d| d.with_timezone(&Utc));
        if let Some(skew) = server.and_then(|s| skewed(s, Utc::now())) {
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    skew_s = skew.num_seconds(),
                    "this node's clock and the S3 server's disagree (by the server's Date): backup ids, journal times and Object Lock periods follow this node's clock; fix NTP"
                );
            }
        }
        Ok(())
    }
}

/// How far `local` is from `server`, when that is more than [`MAX_SKEW`] (the server's `Date`
/// has whole seconds: up to one second of it is rounding).
fn skewed(server: DateTime<Utc>, local: DateTime<Utc>) -> Option<chrono::Duration> {
    let skew = local - server;
    (skew.abs() > MAX_SKEW + chrono::Duration::seconds(1)).then_some(skew)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_real_difference_is_a_skew() {
        let server = DateTime::parse_from_rfc2822("Fri, 04 Dec 2026 15:30:00 GMT")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(skewed(server, server + chrono::Duration::seconds(20)), None);
        assert_eq!(
            skewed(server, server - chrono::Duration::minutes(2)),
            Some(chrono::Duration::minutes(-2))
        );
        assert!(skewed(server, server + chrono::Duration::minutes(5)).is_some());
    }
}
