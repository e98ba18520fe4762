//! The fault suite's integration tests: its three modes against the real
//! binaries (`exact_under_faults`, `cluster`, `failover`), and the
//! end-to-end `totaler verify` and upgrade tests beside it, on the test
//! PostgreSQL and RabbitMQ.

mod cluster;
mod exact_under_faults;
mod failover;
mod support;
mod upgrade;
mod verify;
