//! Test-only crash points. The restore's promise is that `kill -9` anywhere leaves a node that
//! `--resume` or `--rollback` can handle; the tests prove it by making the real binary die at
//! named points. Nothing here runs unless `LIFEBOAT_TEST_CRASH_AT` names a point, and the step
//! code never reads the variable itself: the run loop calls [`before`] and [`after`] around
//! every step, and the one step with an inner point calls [`point`]. `member replace` uses
//! the same points, named `member:<step>`.

use super::Step;

/// Makes the process exit (like `kill -9`: no cleanup) at a named point: `<step>` (after the
/// step's action, before the journal records it done), `<step>:before`, or
/// `stop-control-plane:midway` (after the first manifest moved).
pub const CRASH_ENV: &str = "LIFEBOAT_TEST_CRASH_AT";

/// Before `step` runs (its start is journaled).
pub(super) fn before(step: Step) {
    point(&format!("{}:before", step.name()));
}

/// After `step` did its work, before the journal records it done.
pub(super) fn after(step: Step) {
    point(step.name());
}

/// Exits with code 86 when `name` is the point asked for.
pub(crate) fn point(name: &str) {
    if std::env::var(CRASH_ENV).is_ok_and(|v| v == name) {
        eprintln!("lifeboat: test crash at {name}");
        std::process::exit(86);
    }
}
