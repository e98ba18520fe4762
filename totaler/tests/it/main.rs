//! The totaler's integration tests, against a real RabbitMQ (a unique queue
//! per test) and real files in a temporary directory.

mod alerts;
mod cluster;
mod consuming;
mod crashes;
mod dlq;
mod exactness;
mod http_limits;
mod metrics;
mod rewind;
mod shutdown;
mod startup;
mod sum_range;
mod support;
mod traces;
