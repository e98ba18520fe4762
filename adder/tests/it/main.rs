//! The adder's integration tests, against a real PostgreSQL (a fresh
//! database per test) and a real RabbitMQ (a unique queue per test).

mod adds;
mod batches;
mod bounds;
mod drain;
mod failover;
mod grouping;
mod grpcurl;
mod http_api;
mod limits;
mod metrics;
mod outboxes;
mod partition;
mod password_files;
mod purges;
mod reference;
mod relay;
mod request_ids;
mod shutdown;
mod startup;
mod support;
mod traces;
mod upgrades;
