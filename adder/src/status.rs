//! What `/readyz` reports of the relay: whether it holds a broker channel.
//! The relay sets it; the HTTP server reads it; the `adder_relay_broker_up`
//! gauge mirrors it (it is written here, never read back). No I/O.

use std::sync::atomic::{AtomicBool, Ordering};

use prometheus::IntGauge;

/// The adder's live status.
#[derive(Debug)]
pub struct Status {
    broker_up: AtomicBool,
    /// Mirrors `broker_up` for Prometheus.
    broker_gauge: IntGauge,
}

impl Status {
    /// A status whose broker is down until the relay connects; `broker_gauge`
    /// follows it.
    pub fn new(broker_gauge: IntGauge) -> Self {
        broker_gauge.set(0);
        Self {
            broker_up: AtomicBool::new(false),
            broker_gauge,
        }
    }

    /// Whether the relay currently holds a broker channel.
    pub fn broker_up(&self) -> bool {
        self.broker_up.load(Ordering::Relaxed)
    }

    pub fn set_broker_up(&self, up: bool) {
        self.broker_up.store(up, Ordering::Relaxed);
        self.broker_gauge.set(i64::from(up));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_broker_gauge_mirrors_the_status() {
        let gauge = IntGauge::new("broker_up", "test").expect("a valid gauge");
        let status = Status::new(gauge.clone());
        assert!(!status.broker_up());
        status.set_broker_up(true);
        assert!(status.broker_up());
        assert_eq!(gauge.get(), 1);
        status.set_broker_up(false);
        assert_eq!((status.broker_up(), gauge.get()), (false, 0));
    }
}
