//! Logging guest-caused events without letting a guest flood the log: the
//! first ten occurrences, then the 16th, 32nd, 64th, ...
//!
//! One rule for the VMM, its device models and the vhost-user daemons; no
//! dependencies, so `devices` and `common` can both use it without
//! depending on each other.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts occurrences of one kind of event.
#[derive(Debug, Default)]
pub struct RateLimited {
    count: AtomicU64,
}

impl RateLimited {
    /// Records one occurrence; `Some(n)` (the running count) when this one
    /// should be logged.
    pub fn hit(&self) -> Option<u64> {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        (n <= 10 || n.is_power_of_two()).then_some(n)
    }

    /// Occurrences so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_first_ten_then_powers_of_two() {
        let r = RateLimited::default();
        let logged: Vec<u64> = (0..100).filter_map(|_| r.hit()).collect();
        assert_eq!(logged, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 16, 32, 64]);
        assert_eq!(r.count(), 100);
    }
}
