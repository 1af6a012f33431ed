//! Readiness: named checks each stage registers (MQTT connected, Kafka reachable, output
//! directory writable), evaluated when `/ready` is asked.

use std::sync::{Arc, Mutex, MutexGuard};

/// A readiness check: `Ok` when the component is ready, otherwise why not (shown in `/ready`).
/// It may block briefly (a broker probe); the server runs it off the async threads.
pub type Check = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The readiness checks of one process. Clones share the set.
///
/// Bound: one entry per name; stages register a fixed handful.
#[derive(Clone, Default)]
pub struct Health {
    checks: Arc<Mutex<Vec<(String, Check)>>>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.lock().iter().map(|(n, _)| n.clone()).collect();
        f.debug_struct("Health").field("checks", &names).finish()
    }
}

/// The outcome of every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// Each check's name and outcome, in registration order.
    pub checks: Vec<(String, Result<(), String>)>,
}

impl Readiness {
    /// Ready when at least one check is registered and every check passes: a process whose
    /// stages have not started yet is not ready.
    pub fn ready(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|(_, r)| r.is_ok())
    }

    /// One line per check: `name ok` or `name not ready: reason`.
    pub fn report(&self) -> String {
        if self.checks.is_empty() {
            return "not ready: no stage has started\n".to_owned();
        }
        let mut out = String::new();
        for (name, result) in &self.checks {
            match result {
                Ok(()) => out.push_str(&format!("{name} ok\n")),
                Err(why) => out.push_str(&format!("{name} not ready: {why}\n")),
            }
        }
        out
    }
}

impl Health {
    /// No checks yet (not ready).
    pub fn new() -> Self {
        Health::default()
    }

    fn lock(&self) -> MutexGuard<'_, Vec<(String, Check)>> {
        match self.checks.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Adds the check `name`, replacing an earlier one of that name.
    pub fn register(
        &self,
        name: &str,
        check: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) {
        let check: Check = Arc::new(check);
        let mut checks = self.lock();
        match checks.iter_mut().find(|(n, _)| n == name) {
            Some(entry) => entry.1 = check,
            None => checks.push((name.to_owned(), check)),
        }
    }

    /// Removes the check `name` (a stage that stopped).
    pub fn remove(&self, name: &str) {
        self.lock().retain(|(n, _)| n != name);
    }

    /// Runs every check (outside the lock, since checks may block).
    pub fn check(&self) -> Readiness {
        let checks: Vec<(String, Check)> = self.lock().clone();
        Readiness {
            checks: checks
                .into_iter()
                .map(|(name, check)| {
                    let result = check();
                    (name, result)
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_with_checks_all_passing() {
        let health = Health::new();
        assert!(!health.check().ready(), "nothing started yet");
        health.register("mqtt", || Ok(()));
        assert!(health.check().ready());
        health.register("kafka", || Err("no broker answered".into()));
        let readiness = health.check();
        assert!(!readiness.ready());
        assert_eq!(
            readiness.report(),
            "mqtt ok\nkafka not ready: no broker answered\n"
        );
        health.register("kafka", || Ok(()));
        assert!(health.check().ready(), "replaced by name");
        health.remove("kafka");
        assert_eq!(health.check().checks.len(), 1);
    }
}
