//! Deadlines of bounded waits.

use std::time::{Duration, Instant};

/// The time left until `deadline`, for a bounded wait: `Some(None)` waits without bound (no
/// deadline), `None` means the deadline has passed.
pub(crate) fn time_left(deadline: Option<Instant>) -> Option<Option<Duration>> {
    match deadline {
        None => Some(None),
        Some(deadline) => deadline
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
            .map(Some),
    }
}
