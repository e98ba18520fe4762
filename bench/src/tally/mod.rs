//! Tally itself, as the release binaries in their own processes, on a fresh
//! database, a queue and a sum file of this run: durable Adds/s at
//! saturation (counted only once the total is exactly what the acknowledged
//! Adds make it), latency at a fixed rate, backlog drain from the queue and
//! from the outbox, `GET /sum`, and each service's memory, under load and
//! per idle connection.
//!
//! The harness keeps `expected`, the total the acknowledged Adds make; every
//! phase ends by waiting for the totaler to reach it, and a total that
//! passes it is an error, never a result.
//!
//! # Layout
//! - `stack`: [`Stack`], the services' lifecycle and the exact-total check.
//! - `saturation`, `latency`, `drain`, `outbox_drain`, `connections`: one
//!   measurement phase each, as methods of [`Stack`].
//! - `quantiles`: the latency maths (nearest-rank percentiles, Add -> counted).

mod connections;
mod drain;
mod latency;
mod outbox_drain;
pub mod quantiles;
mod saturation;
mod stack;

pub use stack::Stack;
pub(crate) use stack::wait_total;
