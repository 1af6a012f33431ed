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

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

const SHARDS: usize = 16;

/// Refusals remembered per shard when deduplication is off (`capacity` 0): refusals must be
/// remembered anyway, or a refused record would be redelivered and refused forever.
const REFUSALS_WITHOUT_DEDUP: usize = 64;

/// An event id as the window keeps it: 128 bits of two keyed hashes of it, not the string.
///
/// Why: kept as strings (a UUID's 36 bytes, boxed twice, plus a map entry) a million ids took
/// about 300 bytes each, and the bridge's memory grew with the backlog until the window was
/// full (79 MB at 100k events, 345 MB at 1M); as hashes they take about 50. Two different ids
/// are taken for one with a probability of about n·m / 2¹²⁸ for n ids in the window and m
/// looked up — below 10⁻²² for a million against ten billion — and the keys are random per
/// process, so no input can be crafted to collide.
type IdHash = u128;

/// Hashes an [`IdHash`] by taking its low bits: they are already uniformly random.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u128 keys are hashed here; any other input still spreads.
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u128(&mut self, id: u128) {
        self.0 = id as u64;
    }
}

type ById = BuildHasherDefault<IdHasher>;

#[derive(Debug)]
enum Pending<W> {
    /// Handed to the output; these copies wait for its outcome.
    InFlight(Vec<W>),
    /// Refused by the output for good, for this reason; the next copy goes to the DLQ.
    Refused(Arc<str>),
}

#[derive(Debug)]
struct Shard<W> {
    /// Ids durable at the output: by far the most, so they are only a set.
    confirmed: HashSet<IdHash, ById>,
    /// Ids in flight, and ids refused.
    pending: HashMap<IdHash, Pending<W>, ById>,
    /// Settled ids (confirmed or refused), oldest first: the ones forgotten first.
    settled: VecDeque<IdHash>,
}

impl<W> Default for Shard<W> {
    fn default() -> Self {
        Shard {
            confirmed: HashSet::default(),
            pending: HashMap::default(),
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
/// Bound: `capacity` settled ids in memory (about 50 bytes each, see [`IdHash`]), oldest
/// forgotten first; in flight, one entry per record the producer holds, which its own queue
/// bounds, plus one waiter per copy received meanwhile, which the broker's in-flight window
/// bounds.
#[derive(Debug)]
pub struct DedupWindow<W = ()> {
    shards: Vec<Mutex<Shard<W>>>,
    per_shard: usize,
    keys: (RandomState, RandomState),
}

impl<W> DedupWindow<W> {
    /// A window of about `capacity` ids; 0 disables deduplication.
    pub fn new(capacity: usize) -> Self {
        DedupWindow {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: capacity.div_ceil(SHARDS),
            keys: (RandomState::new(), RandomState::new()),
        }
    }

    /// The id's hash and its shard's index.
    fn locate(&self, event_id: &str) -> (IdHash, usize) {
        let high = self.keys.0.hash_one(event_id);
        let id = (IdHash::from(high) << 64) | IdHash::from(self.keys.1.hash_one(event_id));
        // The shard from the high half, the map's buckets from the low half.
        (id, (high >> 32) as usize % SHARDS)
    }

    fn shard(&self, index: usize) -> MutexGuard<'_, Shard<W>> {
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
        self.claim_located(self.locate(event_id), waiter)
    }

    fn claim_located(&self, (id, index): (IdHash, usize), waiter: W) -> Claim<W> {
        let mut shard = self.shard(index);
        if self.per_shard == 0 {
            // Deduplication off: only refusals are remembered.
            return match shard.pending.remove(&id) {
                Some(Pending::Refused(reason)) => Claim::Reroute(reason),
                _ => Claim::Produce,
            };
        }
        match shard.pending.get_mut(&id) {
            Some(Pending::InFlight(waiters)) => {
                waiters.push(waiter);
                return Claim::Waiting;
            }
            Some(Pending::Refused(reason)) => {
                let reason = Arc::clone(reason);
                shard.pending.insert(id, Pending::InFlight(Vec::new()));
                return Claim::Reroute(reason);
            }
            None => {}
        }
        if shard.confirmed.contains(&id) {
            return Claim::Duplicate(waiter);
        }
        shard.pending.insert(id, Pending::InFlight(Vec::new()));
        Claim::Produce
    }

    /// Records the outcome of the record produced for `event_id` and returns the copies that
    /// waited for it: acknowledge them if `outcome` is [`Settled::Confirmed`], else let them be
    /// redelivered.
    pub fn settle(&self, event_id: &str, outcome: Settled) -> Vec<W> {
        self.settle_located(self.locate(event_id), outcome)
    }

    fn settle_located(&self, (id, index): (IdHash, usize), outcome: Settled) -> Vec<W> {
        let mut shard = self.shard(index);
        let waiters = match shard.pending.remove(&id) {
            Some(Pending::InFlight(waiters)) => waiters,
            // Settled already.
            Some(refused @ Pending::Refused(_)) => {
                shard.pending.insert(id, refused);
                return Vec::new();
            }
            None if shard.confirmed.contains(&id) => return Vec::new(),
            // Never claimed (deduplication off).
            None => Vec::new(),
        };
        let refused = match outcome {
            Settled::Failed => return waiters,
            Settled::Confirmed if self.per_shard == 0 => return waiters,
            Settled::Confirmed => None,
            Settled::Refused(reason) => Some(reason),
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
            shard.confirmed.remove(&oldest);
            // An id forgotten and claimed again since is in flight: leave that entry alone.
            if matches!(shard.pending.get(&oldest), Some(Pending::Refused(_))) {
                shard.pending.remove(&oldest);
            }
        }
        shard.settled.push_back(id);
        match refused {
            None => {
                shard.confirmed.insert(id);
            }
            Some(reason) => {
                shard.pending.insert(id, Pending::Refused(reason));
            }
        }
        waiters
    }

    /// `true` the first time `event_id` is seen within the window, `false` for a duplicate:
    /// claims and confirms at once. For outputs that acknowledge in input order (direct
    /// Parquet), where a duplicate is never acknowledged before the copy it duplicates.
    pub fn first_time(&self, event_id: &str) -> bool
    where
        W: Default,
    {
        let located = self.locate(event_id);
        match self.claim_located(located, W::default()) {
            Claim::Produce | Claim::Reroute(_) => {
                self.settle_located(located, Settled::Confirmed);
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
    fn distinct_ids_are_never_taken_for_each_other_and_each_repeat_is_caught() {
        let window: DedupWindow = DedupWindow::new(200_000);
        let ids: Vec<String> = (0..100_000)
            .map(|i| format!("{:08x}-0000-4000-8000-{i:012x}", i * 7919))
            .collect();
        assert!(ids.iter().all(|id| window.first_time(id)));
        assert!(ids.iter().all(|id| !window.first_time(id)));
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
