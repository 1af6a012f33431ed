//! What was unusual about an accepted event. AWS has changed these payloads before, and relays
//! and replays do not always hold to its documentation: an event that can still make a correct
//! row is kept, and what was off about it is recorded here (the `anomalies` column, and a
//! metric by code) instead of sending a real job completion to the DLQ.

use std::fmt;

/// One kind of anomaly. The `as_str` codes are part of the Parquet contract (values of the
/// `anomalies` column) and of the metrics, and must not change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Anomaly {
    /// `status` is a known status, but not the one the operation produces (a `completed` job
    /// with `SUCCEEDED`, as an earlier revision of AWS's documentation showed it).
    StatusNotExpectedForOperation,
    /// `status` is not one AWS documents; kept as given.
    StatusUnknown,
    /// A `statusDetails` value is not a string; kept as its compact JSON text.
    StatusDetailsValueNotString,
    /// A `targets` element is not a string; kept as its compact JSON text.
    TargetNotString,
    /// `targetSelection`, `description` or `comment` is not a string; kept as its JSON text.
    FieldNotString,
}

impl Anomaly {
    /// Every anomaly, in declaration order (the order of the column's lists and of metrics).
    pub const ALL: [Anomaly; 5] = [
        Anomaly::StatusNotExpectedForOperation,
        Anomaly::StatusUnknown,
        Anomaly::StatusDetailsValueNotString,
        Anomaly::TargetNotString,
        Anomaly::FieldNotString,
    ];

    /// The stable snake_case code.
    pub fn as_str(self) -> &'static str {
        match self {
            Anomaly::StatusNotExpectedForOperation => "status_not_expected_for_operation",
            Anomaly::StatusUnknown => "status_unknown",
            Anomaly::StatusDetailsValueNotString => "status_details_value_not_string",
            Anomaly::TargetNotString => "target_not_string",
            Anomaly::FieldNotString => "field_not_string",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The anomalies of one event: a set, a bit per [`Anomaly`], so the accept path carries it for
/// the cost of a byte.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Anomalies(u8);

impl Anomalies {
    /// No anomaly.
    pub const NONE: Anomalies = Anomalies(0);

    /// Adds `anomaly`.
    #[inline]
    pub fn insert(&mut self, anomaly: Anomaly) {
        self.0 |= anomaly.bit();
    }

    /// Whether `anomaly` is in the set.
    #[inline]
    pub fn contains(self, anomaly: Anomaly) -> bool {
        self.0 & anomaly.bit() != 0
    }

    /// Whether the set is empty (the event is as AWS documents it).
    #[inline]
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The anomalies in the set, in [`Anomaly::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Anomaly> {
        Anomaly::ALL.into_iter().filter(move |a| self.contains(*a))
    }
}

impl FromIterator<Anomaly> for Anomalies {
    fn from_iter<I: IntoIterator<Item = Anomaly>>(iter: I) -> Self {
        let mut set = Anomalies::NONE;
        for anomaly in iter {
            set.insert(anomaly);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_anomaly_has_its_own_bit_and_iterates_in_declaration_order() {
        let all: Anomalies = Anomaly::ALL.into_iter().collect();
        assert_eq!(all.iter().collect::<Vec<_>>(), Anomaly::ALL);
        for anomaly in Anomaly::ALL {
            let one: Anomalies = [anomaly].into_iter().collect();
            assert_eq!(one.iter().collect::<Vec<_>>(), [anomaly]);
        }
        assert!(Anomalies::NONE.is_empty());
    }
}
