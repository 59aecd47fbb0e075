//! Journal times are each uploader's clock (#21): after a fail-over to a node whose clock is
//! behind, times would go backwards inside a chain, while a restore by time assumes they grow;
//! a node whose clock is ahead would date objects in the future. The capture never lets a time
//! go below the chain's last recorded one, and readers refuse objects dated beyond the allowed
//! skew.

use chrono::{DateTime, Utc};

use super::ContinuousError;

/// How far in the future a journal object may be dated (as for backup manifests).
pub const MAX_SKEW: chrono::Duration = chrono::Duration::minutes(5);

/// A clock that never goes below the last time it gave (or the chain's last recorded time).
#[derive(Debug, Clone, Copy)]
pub struct ChainClock {
    floor: Option<DateTime<Utc>>,
}

impl ChainClock {
    pub fn after(floor: Option<DateTime<Utc>>) -> ChainClock {
        ChainClock { floor }
    }

    /// `now`, or the last time given when `now` is earlier (warned once per step back).
    pub fn at(&mut self, now: DateTime<Utc>) -> DateTime<Utc> {
        let t = match self.floor {
            Some(floor) if now < floor => {
                if floor - now > chrono::Duration::seconds(1) {
                    tracing::warn!(
                        behind_ms = (floor - now).num_milliseconds(),
                        "this node's clock is behind the journal's last recorded time (a fail-over to a node with a slow clock?): times are held at the last one until it catches up; check NTP"
                    );
                }
                floor
            }
            _ => now,
        };
        self.floor = Some(t);
        t
    }

    pub fn now(&mut self) -> DateTime<Utc> {
        self.at(Utc::now())
    }
}

/// Refuses an object dated beyond `now` plus the allowed skew.
///
/// # Errors
/// `Invalid`, naming the object's key.
pub fn not_in_the_future(
    key: &str,
    dated: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), ContinuousError> {
    if dated > now + MAX_SKEW {
        return Err(ContinuousError::Invalid {
            key: key.to_string(),
            what: format!(
                "it is dated {dated} — in the future; the writer's clock is wrong, or the object is not ours"
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_never_go_backwards_in_a_chain() {
        let t0 = Utc::now();
        let mut clock = ChainClock::after(Some(t0));
        let earlier = t0 - chrono::Duration::seconds(30);
        assert_eq!(clock.at(earlier), t0, "held at the chain's last time");
        let later = t0 + chrono::Duration::seconds(1);
        assert_eq!(clock.at(later), later);
        assert_eq!(clock.at(earlier), later);
        let mut fresh = ChainClock::after(None);
        assert_eq!(fresh.at(earlier), earlier);
    }

    #[test]
    fn objects_dated_beyond_the_skew_are_refused() {
        let now = Utc::now();
        assert!(not_in_the_future("k", now + chrono::Duration::minutes(1), now).is_ok());
        let e = not_in_the_future("k", now + chrono::Duration::hours(1), now).unwrap_err();
        assert!(e.to_string().contains("in the future"), "{e}");
    }
}
