//! The master's only source of time. Monotonic time is tokio's, so tests
//! pause and advance it (`tokio::time::pause`) instead of sleeping; wall
//! time, for timestamps shown to users, is derived from it, so the two
//! never disagree within one master's life.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct Clock {
    start: Instant,
    start_wall_ms: u64,
}

impl Clock {
    /// A clock starting now, at the system's wall time.
    pub fn system() -> Self {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Clock::starting_at(u64::try_from(wall.as_millis()).unwrap_or(u64::MAX))
    }

    /// A clock whose wall time reads `wall_ms` now (tests).
    pub fn starting_at(wall_ms: u64) -> Self {
        Clock {
            start: Instant::now(),
            start_wall_ms: wall_ms,
        }
    }

    pub fn now(&self) -> Instant {
        Instant::now()
    }

    /// Unix milliseconds.
    pub fn wall_ms(&self) -> u64 {
        let elapsed = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.start_wall_ms.saturating_add(elapsed)
    }
}
