//! What `/readyz` reports of the relays: whether each holds a broker
//! channel (one relay per outbox database). The relays set it; the HTTP
//! server shows it in `/readyz`'s body, but readiness never depends on it
//! (an adder whose outbox commits takes Adds whatever the broker does); the
//! `adder_relay_broker_up` gauge mirrors it (1 while every relay holds one;
//! it is written here, never read back). No I/O.

use std::sync::atomic::{AtomicBool, Ordering};

use prometheus::IntGauge;

/// The adder's live status.
#[derive(Debug)]
pub struct Status {
    /// One flag per relay, in `DATABASE_URL` order.
    broker_up: Vec<AtomicBool>,
    /// Mirrors `broker_up` (all of them) for Prometheus.
    broker_gauge: IntGauge,
}

impl Status {
    /// A status of `relays` relays whose broker is down until each connects;
    /// `broker_gauge` follows it.
    pub fn new(broker_gauge: IntGauge, relays: usize) -> Self {
        broker_gauge.set(0);
        Self {
            broker_up: (0..relays.max(1)).map(|_| AtomicBool::new(false)).collect(),
            broker_gauge,
        }
    }

    /// Whether every relay currently holds a broker channel.
    pub fn broker_up(&self) -> bool {
        self.broker_up.iter().all(|up| up.load(Ordering::Relaxed))
    }

    /// Whether each relay holds a broker channel, in `DATABASE_URL` order.
    pub fn brokers_up(&self) -> Vec<bool> {
        self.broker_up
            .iter()
            .map(|up| up.load(Ordering::Relaxed))
            .collect()
    }

    /// Sets whether relay `relay` holds a broker channel.
    pub fn set_broker_up(&self, relay: usize, up: bool) {
        if let Some(flag) = self.broker_up.get(relay) {
            flag.store(up, Ordering::Relaxed);
        }
        self.broker_gauge.set(i64::from(self.broker_up()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_broker_gauge_mirrors_the_status() {
        let gauge = IntGauge::new("broker_up", "test").expect("a valid gauge");
        let status = Status::new(gauge.clone(), 1);
        assert!(!status.broker_up());
        status.set_broker_up(0, true);
        assert!(status.broker_up());
        assert_eq!(gauge.get(), 1);
        status.set_broker_up(0, false);
        assert_eq!((status.broker_up(), gauge.get()), (false, 0));
    }

    #[test]
    fn the_broker_is_up_only_while_every_relay_holds_a_channel() {
        let gauge = IntGauge::new("broker_up", "test").expect("a valid gauge");
        let status = Status::new(gauge.clone(), 2);
        status.set_broker_up(0, true);
        assert_eq!((status.broker_up(), gauge.get()), (false, 0));
        assert_eq!(status.brokers_up(), [true, false]);
        status.set_broker_up(1, true);
        assert_eq!((status.broker_up(), gauge.get()), (true, 1));
    }
}
