//! Drops redelivered events: AWS publishes at least once, so the same `eventId` can arrive
//! twice. A bounded window of recently *confirmed* ids, sharded so parser workers rarely
//! contend.
//!
//! The rule the window serves: a copy of an event is acknowledged only once an event with its
//! `eventId` is durable at the output — confirmed by Kafka, by this copy or an earlier one, or
//! its reject confirmed in the DLQ. An id therefore enters the window as *in flight* when its
//! first copy is handed to Kafka, and only counts as seen once Kafka confirmed it:
//!
//! * a copy that arrives while the first is in flight is not produced; it *waits*, and is
//!   settled with the first copy's outcome ([`DedupWindow::settle`] returns the waiters);
//! * when the delivery fails, the id is forgotten, so the broker's redelivery is produced
//!   again instead of being taken for a duplicate;
//! * when Kafka refuses the record for good (too large for the topic, invalid), the id is
//!   remembered as *refused*, so that its redelivery goes to the DLQ instead of looping.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

const SHARDS: usize = 16;

/// Refusals remembered per shard when deduplication is off (`capacity` 0): refusals must be
/// remembered anyway, or a refused record would be redelivered and refused forever.
const REFUSALS_WITHOUT_DEDUP: usize = 64;

#[derive(Debug)]
enum Entry<W> {
    /// Handed to the output; these copies wait for its outcome.
    InFlight(Vec<W>),
    /// Durable at the output.
    Confirmed,
    /// Refused by the output for good, for this reason; the next copy goes to the DLQ.
    Refused(Arc<str>),
}

#[derive(Debug)]
struct Shard<W> {
    entries: HashMap<Box<str>, Entry<W>>,
    /// Settled ids (confirmed or refused), oldest first: the ones forgotten first.
    settled: VecDeque<Box<str>>,
}

impl<W> Default for Shard<W> {
    fn default() -> Self {
        Shard {
            entries: HashMap::new(),
            settled: VecDeque::new(),
        }
    }
}

/// What to do with a copy of an event, from [`DedupWindow::claim`].
#[derive(Debug, PartialEq, Eq)]
pub enum Claim<W> {
    /// The first copy (or the first since a failure): produce it.
    Produce,
    /// A copy of an event already durable: acknowledge it now. The waiter comes back.
    Duplicate(W),
    /// A copy of an event in flight: it waits for that outcome ([`DedupWindow::settle`]).
    Waiting,
    /// The output refused this event for good before: send this copy to the DLQ instead,
    /// with this reason (the id is in flight again, for that DLQ record).
    Reroute(Arc<str>),
}

/// The outcome of an id's record at the output, for [`DedupWindow::settle`].
#[derive(Debug, Clone)]
pub enum Settled {
    /// Durable: later copies are duplicates.
    Confirmed,
    /// Not taken (Kafka down, timed out): forgotten, so the redelivery is produced again.
    Failed,
    /// Refused for good, with the reason: the next copy goes to the DLQ.
    Refused(Arc<str>),
}

/// The last `capacity` confirmed event ids (approximately: each of 16 shards keeps
/// `capacity / 16`), and every id in flight.
///
/// Bound: `capacity` settled ids in memory (about 100 bytes each), oldest forgotten first; in
/// flight, one entry per record the producer holds, which its own queue bounds, plus one
/// waiter per copy received meanwhile, which the broker's in-flight window bounds.
#[derive(Debug)]
pub struct DedupWindow<W = ()> {
    shards: Vec<Mutex<Shard<W>>>,
    per_shard: usize,
}

impl<W> DedupWindow<W> {
    /// A window of about `capacity` ids; 0 disables deduplication.
    pub fn new(capacity: usize) -> Self {
        DedupWindow {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: capacity.div_ceil(SHARDS),
        }
    }

    fn shard(&self, event_id: &str) -> MutexGuard<'_, Shard<W>> {
        let mut hasher = DefaultHasher::new();
        event_id.hash(&mut hasher);
        let index = (hasher.finish() as usize) % SHARDS;
        // A poisoned shard only means another worker panicked mid-insert; the map is still a
        // valid map, so keep using it rather than failing every later event.
        match self.shards[index].lock() {
            Ok(shard) => shard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Decides what to do with a copy of `event_id`; `waiter` identifies the copy (its
    /// acknowledgement), kept while an earlier copy is in flight.
    pub fn claim(&self, event_id: &str, waiter: W) -> Claim<W> {
        let mut shard = self.shard(event_id);
        if self.per_shard == 0 {
            // Deduplication off: only refusals are remembered.
            return match shard.entries.remove(event_id) {
                Some(Entry::Refused(reason)) => Claim::Reroute(reason),
                _ => Claim::Produce,
            };
        }
        if let Some(Entry::Refused(reason)) = shard.entries.get(event_id) {
            let reason = Arc::clone(reason);
            shard
                .entries
                .insert(event_id.into(), Entry::InFlight(Vec::new()));
            return Claim::Reroute(reason);
        }
        match shard.entries.get_mut(event_id) {
            Some(Entry::InFlight(waiters)) => {
                waiters.push(waiter);
                Claim::Waiting
            }
            Some(Entry::Confirmed) => Claim::Duplicate(waiter),
            Some(Entry::Refused(_)) | None => {
                shard
                    .entries
                    .insert(event_id.into(), Entry::InFlight(Vec::new()));
                Claim::Produce
            }
        }
    }

    /// Records the outcome of the record produced for `event_id` and returns the copies that
    /// waited for it: acknowledge them if `outcome` is [`Settled::Confirmed`], else let them be
    /// redelivered.
    pub fn settle(&self, event_id: &str, outcome: Settled) -> Vec<W> {
        let mut shard = self.shard(event_id);
        let waiters = match shard.entries.get_mut(event_id) {
            Some(Entry::InFlight(waiters)) => std::mem::take(waiters),
            // Settled already.
            Some(_) => return Vec::new(),
            // Never claimed (deduplication off).
            None => Vec::new(),
        };
        shard.entries.remove(event_id);
        let keep = match outcome {
            Settled::Failed => return waiters,
            Settled::Confirmed if self.per_shard == 0 => return waiters,
            Settled::Confirmed => Entry::Confirmed,
            Settled::Refused(reason) => Entry::Refused(reason),
        };
        let bound = if self.per_shard == 0 {
            REFUSALS_WITHOUT_DEDUP
        } else {
            self.per_shard
        };
        while shard.settled.len() >= bound {
            let Some(oldest) = shard.settled.pop_front() else {
                break;
            };
            // An id forgotten and claimed again since is in flight: leave that entry alone.
            if !matches!(shard.entries.get(&oldest), Some(Entry::InFlight(_))) {
                shard.entries.remove(&oldest);
            }
        }
        let id: Box<str> = event_id.into();
        shard.settled.push_back(id.clone());
        shard.entries.insert(id, keep);
        waiters
    }

    /// `true` the first time `event_id` is seen within the window, `false` for a duplicate:
    /// claims and confirms at once. For outputs that acknowledge in input order (direct
    /// Parquet), where a duplicate is never acknowledged before the copy it duplicates.
    pub fn first_time(&self, event_id: &str) -> bool
    where
        W: Default,
    {
        match self.claim(event_id, W::default()) {
            Claim::Produce | Claim::Reroute(_) => {
                self.settle(event_id, Settled::Confirmed);
                true
            }
            Claim::Duplicate(_) | Claim::Waiting => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_ids_are_duplicates_until_they_leave_the_window() {
        let window: DedupWindow = DedupWindow::new(SHARDS * 2);
        assert!(window.first_time("a"));
        assert!(!window.first_time("a"));
        for i in 0..1000 {
            window.first_time(&format!("filler-{i}"));
        }
        assert!(
            window.first_time("a"),
            "forgotten after the window moved on"
        );
        let off: DedupWindow = DedupWindow::new(0);
        assert!(off.first_time("x") && off.first_time("x"));
    }

    #[test]
    fn a_copy_arriving_while_the_first_is_in_flight_waits_for_its_outcome() {
        let window = DedupWindow::new(1000);
        assert_eq!(window.claim("e1", 1), Claim::Produce);
        assert_eq!(window.claim("e1", 2), Claim::Waiting);
        assert_eq!(window.claim("e1", 3), Claim::Waiting);
        assert_eq!(window.settle("e1", Settled::Confirmed), vec![2, 3]);
        assert_eq!(window.claim("e1", 4), Claim::Duplicate(4));
    }

    #[test]
    fn a_failed_delivery_is_forgotten_so_the_redelivery_is_produced_again() {
        let window = DedupWindow::new(1000);
        assert_eq!(window.claim("e1", 1), Claim::Produce);
        assert_eq!(window.claim("e1", 2), Claim::Waiting);
        assert_eq!(
            window.settle("e1", Settled::Failed),
            vec![2],
            "the waiter is not acknowledged: it is redelivered too"
        );
        assert_eq!(window.claim("e1", 3), Claim::Produce);
    }

    #[test]
    fn a_refused_event_is_rerouted_once_then_its_copies_are_duplicates() {
        let window = DedupWindow::new(1000);
        assert_eq!(window.claim("big", 1), Claim::Produce);
        window.settle("big", Settled::Refused("too large".into()));
        assert_eq!(window.claim("big", 2), Claim::Reroute("too large".into()));
        assert_eq!(window.claim("big", 3), Claim::Waiting);
        assert_eq!(window.settle("big", Settled::Confirmed), vec![3]);
        assert_eq!(window.claim("big", 4), Claim::Duplicate(4));
    }

    #[test]
    fn refusals_are_remembered_even_with_deduplication_off() {
        let window = DedupWindow::new(0);
        assert_eq!(window.claim("big", 1), Claim::Produce);
        assert_eq!(window.claim("big", 2), Claim::Produce, "no dedup");
        window.settle("big", Settled::Refused("too large".into()));
        assert_eq!(window.claim("big", 3), Claim::Reroute("too large".into()));
        assert_eq!(window.claim("big", 4), Claim::Produce);
    }

    #[test]
    fn in_flight_ids_are_never_evicted_by_the_window_moving_on() {
        let window = DedupWindow::new(SHARDS);
        assert_eq!(window.claim("slow", 0), Claim::Produce);
        for i in 0..1000 {
            let id = format!("filler-{i}");
            assert_eq!(window.claim(&id, i), Claim::Produce);
            window.settle(&id, Settled::Confirmed);
        }
        assert_eq!(window.claim("slow", 1), Claim::Waiting);
        assert_eq!(window.settle("slow", Settled::Confirmed), vec![1]);
    }
}
