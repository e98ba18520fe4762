//! The totaler's integration tests, against a real RabbitMQ (a unique queue
//! per test) and real files in a temporary directory; `cluster_script` runs
//! `scripts/cluster`, whose three private broker nodes it starts itself.

mod alerts;
mod authenticity;
mod cluster;
mod cluster_script;
mod compose_secrets;
mod consuming;
mod crashes;
mod dlq;
mod docs;
mod exactness;
mod gaps;
mod http_limits;
mod metrics;
mod monitoring;
mod outboxes;
mod password_files;
mod pg_ha_compose;
mod reference;
mod repair;
mod rewind;
mod shutdown;
mod startup;
mod sum_range;
mod support;
mod traces;
