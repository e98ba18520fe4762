//! The broker contract against real RabbitMQ nodes, 3.x (the host's) and 4.x
//! (`scripts/rabbitmq4`): no delivery limit dead-letters a well-formed sum,
//! the services' users have exactly the rights they need, a second
//! consumer stands by while the first is there, and
//! `rabbitmq/definitions.json` declares what `proto::topology` declares.

mod definitions;
mod delivery_limit;
mod permissions;
mod single_active;
mod support;
