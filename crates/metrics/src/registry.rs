//! Counters, gauges and histograms on atomics, and their Prometheus text rendering
//! (exposition format 0.0.4).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Default histogram buckets for latencies, in seconds: 1 ms to 5 min. Kafka confirms in
/// milliseconds when healthy and retries for up to `message.timeout.ms` (5 min) when not.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// A monotonically increasing count. Clones share the value.
///
/// It dereferences to its [`AtomicU64`] so code written against plain atomics
/// (`fetch_add(1, Relaxed)`, `load`) keeps working unchanged.
#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// A counter not attached to any registry.
    pub fn detached() -> Self {
        Counter::default()
    }

    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl std::ops::Deref for Counter {
    type Target = AtomicU64;

    fn deref(&self) -> &AtomicU64 {
        &self.0
    }
}

/// A value that goes up and down (queue depth, connections up, lag). Clones share the value.
#[derive(Debug, Clone, Default)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    /// A gauge not attached to any registry.
    pub fn detached() -> Self {
        Gauge::default()
    }

    /// Sets the value.
    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
    }

    /// Adds `n` (may be negative).
    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Subtracts one.
    pub fn dec(&self) {
        self.add(-1);
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl std::ops::Deref for Gauge {
    type Target = AtomicI64;

    fn deref(&self) -> &AtomicI64 {
        &self.0
    }
}

#[derive(Debug)]
struct HistogramInner {
    /// Upper bounds, ascending; the implicit `+Inf` bucket is the last count.
    bounds: Vec<f64>,
    /// Non-cumulative counts per bucket (`bounds.len() + 1` of them).
    counts: Vec<AtomicU64>,
    /// Sum of observations, as `f64` bits.
    sum: AtomicU64,
}

/// A distribution of observations in fixed buckets. Clones share the buckets.
#[derive(Debug, Clone)]
pub struct Histogram(Arc<HistogramInner>);

impl Default for Histogram {
    fn default() -> Self {
        Histogram::with_buckets(&LATENCY_BUCKETS)
    }
}

impl Histogram {
    /// A detached histogram with these upper bounds (sorted, NaNs dropped).
    pub fn with_buckets(bounds: &[f64]) -> Self {
        let mut bounds: Vec<f64> = bounds.iter().copied().filter(|b| b.is_finite()).collect();
        bounds.sort_by(f64::total_cmp);
        bounds.dedup();
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Histogram(Arc::new(HistogramInner {
            bounds,
            counts,
            sum: AtomicU64::new(0f64.to_bits()),
        }))
    }

    /// Records one observation.
    pub fn observe(&self, value: f64) {
        let inner = &self.0;
        let index = inner
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(inner.bounds.len());
        if let Some(count) = inner.counts.get(index) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        let mut current = inner.sum.load(Ordering::Relaxed);
        loop {
            let next = (f64::from_bits(current) + value).to_bits();
            match inner.sum.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
    }

    /// Records a duration in seconds.
    pub fn observe_duration(&self, duration: Duration) {
        self.observe(duration.as_secs_f64());
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.0
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Sum of the observations so far.
    pub fn sum(&self) -> f64 {
        f64::from_bits(self.0.sum.load(Ordering::Relaxed))
    }
}

type GaugeFn = Arc<dyn Fn() -> Option<i64> + Send + Sync>;
/// Series whose label sets are only known when scraped: `(labels, value)` pairs.
type ManyFn = Arc<dyn Fn() -> Vec<(Labels, i64)> + Send + Sync>;

#[derive(Clone)]
enum Series {
    Counter(Counter),
    Gauge(Gauge),
    /// A gauge or counter read when scraped.
    ValueFn(GaugeFn),
    /// Several series read when scraped, their labels appended to the registered ones.
    ManyFn(ManyFn),
    Histogram(Histogram),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

type Labels = Vec<(String, String)>;
/// A family copied out of the lock for rendering: name, help, type, series.
type Snapshot = (String, String, Kind, Vec<(Labels, Series)>);

struct Family {
    help: String,
    kind: Kind,
    series: Vec<(Labels, Series)>,
}

/// The set of metrics one process exports. Clones share the set.
///
/// Bound: one entry per distinct name and label set registered; stages label by bounded
/// sets (event family, reject kind, topic, partition, connection), never by event data.
#[derive(Clone, Default)]
pub struct Registry {
    families: Arc<Mutex<BTreeMap<String, Family>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("families", &self.lock().len())
            .finish()
    }
}

fn owned_labels(labels: &[(&str, &str)]) -> Labels {
    labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn valid_name(name: &str, allow_colon: bool) -> bool {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (allow_colon && c == ':'));
    first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (allow_colon && c == ':'))
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Family>> {
        // A panic elsewhere while holding the lock leaves a consistent map (every mutation is a
        // single insert or push), so keep serving it.
        match self.families.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Finds or adds the series `name{labels}`; `make` builds it when new. `None` when the name
    /// or a label is invalid or the name is taken by another type (a bug, logged).
    fn series(
        &self,
        name: &str,
        help: &str,
        kind: Kind,
        labels: &[(&str, &str)],
        make: impl FnOnce() -> Series,
    ) -> Option<Series> {
        if !valid_name(name, true)
            || labels
                .iter()
                .any(|(k, _)| !valid_name(k, false) || k.starts_with("__") || *k == "le")
        {
            tracing::error!(
                name,
                ?labels,
                "invalid metric or label name; the metric is not exported"
            );
            return None;
        }
        let labels = owned_labels(labels);
        let mut families = self.lock();
        let family = families.entry(name.to_owned()).or_insert_with(|| Family {
            help: help.to_owned(),
            kind,
            series: Vec::new(),
        });
        if family.kind != kind {
            tracing::error!(
                name,
                registered = family.kind.as_str(),
                requested = kind.as_str(),
                "metric registered twice with different types; the second is not exported"
            );
            return None;
        }
        if let Some((_, series)) = family.series.iter().find(|(l, _)| *l == labels) {
            return Some(series.clone());
        }
        let series = make();
        family.series.push((labels, series.clone()));
        Some(series)
    }

    /// The counter `name` without labels.
    pub fn counter(&self, name: &str, help: &str) -> Counter {
        self.counter_with(name, help, &[])
    }

    /// The counter `name{labels}`, created at zero the first time.
    pub fn counter_with(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Counter {
        match self.series(name, help, Kind::Counter, labels, || {
            Series::Counter(Counter::default())
        }) {
            Some(Series::Counter(c)) => c,
            _ => Counter::detached(),
        }
    }

    /// The gauge `name` without labels.
    pub fn gauge(&self, name: &str, help: &str) -> Gauge {
        self.gauge_with(name, help, &[])
    }

    /// The gauge `name{labels}`, created at zero the first time.
    pub fn gauge_with(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Gauge {
        match self.series(name, help, Kind::Gauge, labels, || {
            Series::Gauge(Gauge::default())
        }) {
            Some(Series::Gauge(g)) => g,
            _ => Gauge::detached(),
        }
    }

    /// A gauge computed when scraped, for values another component owns (a librdkafka queue,
    /// a channel's length). `read` returning `None` leaves the series out of that scrape (its
    /// owner is gone). Registering the same name and labels again replaces the function.
    /// `read` runs on the scraping task: keep it to a few atomic loads.
    pub fn gauge_fn(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        read: impl Fn() -> Option<i64> + Send + Sync + 'static,
    ) {
        self.replace_fn(
            name,
            help,
            Kind::Gauge,
            labels,
            Series::ValueFn(Arc::new(read)),
        );
    }

    /// A counter another component owns (an atomic in a stage's stats struct), read when
    /// scraped; like [`Registry::gauge_fn`]. The value must never decrease.
    pub fn counter_fn(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        read: impl Fn() -> Option<u64> + Send + Sync + 'static,
    ) {
        let read = move || read().map(|v| i64::try_from(v).unwrap_or(i64::MAX));
        self.replace_fn(
            name,
            help,
            Kind::Counter,
            labels,
            Series::ValueFn(Arc::new(read)),
        );
    }

    /// Gauges whose label sets are only known when scraped (consumer lag per partition):
    /// `read` returns `(labels, value)` pairs, rendered as `name{labels}`. Registering the same
    /// name again replaces the function.
    pub fn gauges_fn(
        &self,
        name: &str,
        help: &str,
        read: impl Fn() -> Vec<(Vec<(String, String)>, i64)> + Send + Sync + 'static,
    ) {
        self.replace_fn(name, help, Kind::Gauge, &[], Series::ManyFn(Arc::new(read)));
    }

    fn replace_fn(
        &self,
        name: &str,
        help: &str,
        kind: Kind,
        labels: &[(&str, &str)],
        series: Series,
    ) {
        let fresh = series.clone();
        if self
            .series(name, help, kind, labels, move || fresh)
            .is_none()
        {
            return;
        }
        let owned = owned_labels(labels);
        if let Some(family) = self.lock().get_mut(name) {
            for (l, existing) in &mut family.series {
                if *l == owned {
                    *existing = series.clone();
                }
            }
        }
    }

    /// The histogram `name{labels}` with `buckets` (upper bounds in the metric's unit),
    /// created empty the first time; later calls return it with its original buckets.
    pub fn histogram_with(
        &self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        buckets: &[f64],
    ) -> Histogram {
        match self.series(name, help, Kind::Histogram, labels, || {
            Series::Histogram(Histogram::with_buckets(buckets))
        }) {
            Some(Series::Histogram(h)) => h,
            _ => Histogram::with_buckets(buckets),
        }
    }

    /// Every metric in the Prometheus text exposition format (version 0.0.4), families
    /// sorted by name, series in registration order.
    pub fn render(&self) -> String {
        let families: Vec<Snapshot> = self
            .lock()
            .iter()
            .map(|(name, f)| (name.clone(), f.help.clone(), f.kind, f.series.clone()))
            .collect();
        // Gauge functions run outside the lock: they may take locks of their own.
        let mut out = String::with_capacity(families.len() * 256);
        for (name, help, kind, series) in families {
            let _ = writeln!(out, "# HELP {name} {}", escape_help(&help));
            let _ = writeln!(out, "# TYPE {name} {}", kind.as_str());
            for (labels, series) in series {
                match series {
                    Series::Counter(c) => sample(&mut out, &name, &labels, None, c.get()),
                    Series::Gauge(g) => sample(&mut out, &name, &labels, None, g.get()),
                    Series::ValueFn(read) => {
                        if let Some(value) = read() {
                            sample(&mut out, &name, &labels, None, value);
                        }
                    }
                    Series::ManyFn(read) => {
                        for (extra, value) in read() {
                            let mut all = labels.clone();
                            all.extend(extra.into_iter().filter(|(k, _)| valid_name(k, false)));
                            sample(&mut out, &name, &all, None, value);
                        }
                    }
                    Series::Histogram(h) => {
                        let bucket = format!("{name}_bucket");
                        let mut cumulative = 0u64;
                        for (i, count) in h.0.counts.iter().enumerate() {
                            cumulative += count.load(Ordering::Relaxed);
                            let le =
                                h.0.bounds
                                    .get(i)
                                    .map_or_else(|| "+Inf".to_owned(), |b| fmt_f64(*b));
                            sample(&mut out, &bucket, &labels, Some(&le), cumulative);
                        }
                        sample(
                            &mut out,
                            &format!("{name}_sum"),
                            &labels,
                            None,
                            fmt_f64(h.sum()),
                        );
                        sample(
                            &mut out,
                            &format!("{name}_count"),
                            &labels,
                            None,
                            cumulative,
                        );
                    }
                }
            }
        }
        out
    }
}

fn sample(
    out: &mut String,
    name: &str,
    labels: &Labels,
    le: Option<&str>,
    value: impl std::fmt::Display,
) {
    out.push_str(name);
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        let mut first = true;
        let le_pair = le.map(|v| ("le", v));
        for (k, v) in labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(le_pair)
        {
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(k);
            out.push_str("=\"");
            escape_label(out, v);
            out.push('"');
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

fn fmt_f64(value: f64) -> String {
    if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else if value.is_nan() {
        "NaN".to_owned()
    } else {
        // `{:?}` keeps a decimal point or exponent and round-trips exactly.
        format!("{value:?}")
    }
}

fn escape_label(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_and_histograms_render_in_the_text_format() {
        let registry = Registry::new();
        let a = registry.counter_with("x_total", "Things.", &[("kind", "a\"b\\c\nd")]);
        a.add(3);
        registry
            .counter_with("x_total", "Things.", &[("kind", "a\"b\\c\nd")])
            .inc();
        registry.gauge("depth", "Queue depth.").set(-2);
        let h = registry.histogram_with("lat_seconds", "Latency.", &[("t", "k")], &[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(5.0);
        let text = registry.render();
        assert!(text.contains("# TYPE x_total counter\n"), "{text}");
        assert!(
            text.contains("x_total{kind=\"a\\\"b\\\\c\\nd\"} 4\n"),
            "{text}"
        );
        assert!(text.contains("depth -2\n"), "{text}");
        assert!(
            text.contains("lat_seconds_bucket{t=\"k\",le=\"0.1\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("lat_seconds_bucket{t=\"k\",le=\"1.0\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("lat_seconds_bucket{t=\"k\",le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("lat_seconds_sum{t=\"k\"} 5.55\n"), "{text}");
        assert!(text.contains("lat_seconds_count{t=\"k\"} 3\n"), "{text}");
        assert!(
            text.find("# HELP depth").unwrap_or(usize::MAX) < text.find("# HELP lat").unwrap_or(0)
        );
    }

    #[test]
    fn a_type_clash_or_bad_name_yields_a_detached_metric_not_a_panic() {
        let registry = Registry::new();
        registry.counter("same", "A counter.").inc();
        let clash = registry.gauge("same", "Now a gauge.");
        clash.set(7);
        let bad = registry.counter("9bad name", "Invalid.");
        bad.inc();
        let reserved = registry.counter_with("ok_total", "Reserved label.", &[("le", "1")]);
        reserved.inc();
        let text = registry.render();
        assert!(
            text.contains("same 1\n") && !text.contains("same 7"),
            "{text}"
        );
        assert!(
            !text.contains("9bad") && !text.contains("ok_total"),
            "{text}"
        );
        assert_eq!(
            (clash.get(), bad.get()),
            (7, 1),
            "detached handles still count"
        );
    }

    #[test]
    fn gauge_functions_are_read_at_scrape_time_and_skipped_when_gone() {
        let registry = Registry::new();
        let source = Arc::new(AtomicI64::new(5));
        let weak = Arc::downgrade(&source);
        registry.gauge_fn("q", "Queue.", &[("queue", "x")], move || {
            weak.upgrade().map(|s| s.load(Ordering::Relaxed))
        });
        assert!(registry.render().contains("q{queue=\"x\"} 5\n"));
        source.store(9, Ordering::Relaxed);
        assert!(registry.render().contains("q{queue=\"x\"} 9\n"));
        drop(source);
        assert!(
            !registry.render().contains("q{"),
            "owner gone: series left out"
        );
        registry.gauge_fn("q", "Queue.", &[("queue", "x")], || Some(1));
        assert!(registry.render().contains("q{queue=\"x\"} 1\n"), "replaced");

        registry.counter_fn("c_total", "Owned elsewhere.", &[], || Some(12));
        registry.gauges_fn("lag", "Lag.", || {
            (0..2)
                .map(|p| (vec![("partition".to_owned(), p.to_string())], p * 10))
                .collect()
        });
        let text = registry.render();
        assert!(
            text.contains("# TYPE c_total counter\nc_total 12\n"),
            "{text}"
        );
        assert!(
            text.contains("lag{partition=\"0\"} 0\nlag{partition=\"1\"} 10\n"),
            "{text}"
        );
    }
}
