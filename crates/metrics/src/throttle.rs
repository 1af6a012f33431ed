//! Rate-limited warnings: a flood of bad input must not become a flood of log lines.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Allows one log line per key per interval and counts what it held back.
///
/// Bound: one entry per key; keys are a fixed set (reject kinds), never input data.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    state: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

impl Throttle {
    /// At most one line per key every `every`.
    pub fn new(every: Duration) -> Self {
        Throttle {
            every,
            state: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(held_back)` when a line for `key` may be written now (`held_back` lines were
    /// suppressed since the last one), `None` when it should be suppressed.
    pub fn allow(&self, key: &'static str) -> Option<u64> {
        let now = Instant::now();
        let mut state = match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        match state.get_mut(key) {
            Some((last, suppressed)) if now.duration_since(*last) < self.every => {
                *suppressed += 1;
                None
            }
            Some((last, suppressed)) => {
                let held_back = *suppressed;
                *last = now;
                *suppressed = 0;
                Some(held_back)
            }
            None => {
                state.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_key_per_interval_with_the_suppressed_count() {
        let throttle = Throttle::new(Duration::from_millis(200));
        assert_eq!(throttle.allow("not_json"), Some(0));
        assert_eq!(throttle.allow("not_json"), None);
        assert_eq!(throttle.allow("not_json"), None);
        assert_eq!(
            throttle.allow("missing_field"),
            Some(0),
            "keys are independent"
        );
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(throttle.allow("not_json"), Some(2));
    }
}
