//! The cron side of `serve`: schedule expressions and the ticks they fire.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::mpsc;

use super::{ServeError, Shared};

/// Why a schedule expression is refused.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "`{expr}` has {fields} fields; use 5 (min hour dom mon dow) or 6 (with seconds first)"
    )]
    Fields { expr: String, fields: usize },
    #[error("`{expr}` is not a cron expression: {source}")]
    Parse {
        expr: String,
        #[source]
        source: croner::errors::CronError,
    },
    #[error("`{expr}` {what}: {source}")]
    Fires {
        expr: String,
        what: &'static str,
        #[source]
        source: croner::errors::CronError,
    },
}

/// Turns a 5-field cron expression into the 6-field form (seconds first); 6 fields pass through.
///
/// # Errors
/// Not 5 or 6 fields, or not a valid expression.
pub fn normalize_schedule(expr: &str) -> Result<(String, Duration), ScheduleError> {
    let fields = expr.split_whitespace().count();
    let six = match fields {
        5 => format!("0 {}", expr.trim()),
        6 => expr.trim().to_string(),
        fields => {
            return Err(ScheduleError::Fields {
                expr: expr.into(),
                fields,
            })
        }
    };
    let fires = |what: &'static str| {
        move |source| ScheduleError::Fires {
            expr: expr.into(),
            what,
            source,
        }
    };
    let cron = croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .build()
        .parse(&six)
        .map_err(|source| ScheduleError::Parse {
            expr: expr.into(),
            source,
        })?;
    let now = Utc::now();
    let first = cron
        .find_next_occurrence(&now, false)
        .map_err(fires("never fires"))?;
    let second = cron
        .find_next_occurrence(&first, false)
        .map_err(fires("fires only once"))?;
    let interval = (second - first)
        .to_std()
        .unwrap_or(Duration::from_secs(3600));
    Ok((six, interval))
}

pub(super) async fn start_scheduler(
    schedule: &str,
    ticks: mpsc::Sender<()>,
    shared: Arc<Shared>,
) -> Result<tokio_cron_scheduler::JobScheduler, ServeError> {
    let err = |e: tokio_cron_scheduler::JobSchedulerError| ServeError::Scheduler(e.to_string());
    let scheduler = tokio_cron_scheduler::JobScheduler::new()
        .await
        .map_err(err)?;
    let job = tokio_cron_scheduler::Job::new_async(schedule, move |_, _| {
        let (ticks, shared) = (ticks.clone(), shared.clone());
        Box::pin(async move {
            if shared
                .running
                .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                shared.metrics.skipped.inc();
                tracing::warn!("scheduled tick skipped: the previous backup is still running");
                return;
            }
            if ticks.try_send(()).is_err() {
                shared.running.store(false, Ordering::SeqCst);
            }
        })
    })
    .map_err(err)?;
    scheduler.add(job).await.map_err(err)?;
    scheduler.start().await.map_err(err)?;
    Ok(scheduler)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_and_six_field_schedules_are_accepted() {
        let (six, interval) = normalize_schedule("0 * * * *").unwrap();
        assert_eq!(six, "0 0 * * * *");
        assert_eq!(interval, Duration::from_secs(3600));
        let (_, interval) = normalize_schedule("*/2 * * * * *").unwrap();
        assert_eq!(interval, Duration::from_secs(2));
        assert!(normalize_schedule("hourly").is_err());
        assert!(normalize_schedule("61 * * * *").is_err());
    }
}
