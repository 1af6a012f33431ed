//! Drops redelivered events: AWS publishes at least once, so the same `eventId` can arrive
//! twice. A bounded window of recently seen ids, sharded so parser workers rarely contend.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

const SHARDS: usize = 16;

#[derive(Debug, Default)]
struct Shard {
    seen: HashSet<Box<str>>,
    order: VecDeque<Box<str>>,
}

/// The last `capacity` event ids (approximately: each of 16 shards keeps `capacity / 16`).
///
/// Bound: `capacity` ids in memory (about 100 bytes each), oldest forgotten first.
#[derive(Debug)]
pub struct DedupWindow {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
}

impl DedupWindow {
    /// A window of about `capacity` ids; 0 disables deduplication.
    pub fn new(capacity: usize) -> Self {
        DedupWindow {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: capacity.div_ceil(SHARDS),
        }
    }

    /// `true` the first time `event_id` is seen within the window, `false` for a duplicate.
    pub fn first_time(&self, event_id: &str) -> bool {
        if self.per_shard == 0 {
            return true;
        }
        let mut hasher = DefaultHasher::new();
        event_id.hash(&mut hasher);
        let index = (hasher.finish() as usize) % SHARDS;
        // A poisoned shard only means another worker panicked mid-insert; the set is still a
        // valid set, so keep using it rather than failing every later event.
        let mut shard = match self.shards[index].lock() {
            Ok(shard) => shard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if shard.seen.contains(event_id) {
            return false;
        }
        if shard.order.len() >= self.per_shard {
            if let Some(oldest) = shard.order.pop_front() {
                shard.seen.remove(&oldest);
            }
        }
        let id: Box<str> = event_id.into();
        shard.seen.insert(id.clone());
        shard.order.push_back(id);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_ids_are_duplicates_until_they_leave_the_window() {
        let window = DedupWindow::new(SHARDS * 2);
        assert!(window.first_time("a"));
        assert!(!window.first_time("a"));
        for i in 0..1000 {
            window.first_time(&format!("filler-{i}"));
        }
        assert!(
            window.first_time("a"),
            "forgotten after the window moved on"
        );
        let off = DedupWindow::new(0);
        assert!(off.first_time("x") && off.first_time("x"));
    }
}
