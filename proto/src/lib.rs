//! Tally's contract, the one crate both services share because it *is* the
//! interface between them: the gRPC service (`tally.v1`), the queue message
//! the relay publishes and the totaler consumes, the broker topology, and
//! what a batch's outbox rows are (which `totaler verify` audits by).
//!
//! It owns no behaviour beyond encoding, decoding and declaring; services
//! must not add their own variants of these types.
//!
//! # Layout
//! - [`tally`]: generated tonic/prost code for `proto/tally/v1/tally.proto`.
//! - [`message`]: [`SumMessage`], the JSON body of every queue message.
//! - [`nodes`]: `AMQP_URL`, one broker node or a cluster's list of them,
//!   and connecting to whichever answers.
//! - [`outbox`]: the SQL text that selects a snapshot batch's rows.
//! - [`topology`]: the queues and their arguments, their declaration (or
//!   passive check), the delivery limit and the services' broker rights.

pub mod message;
pub mod nodes;
pub mod outbox;
pub mod topology;

pub use message::{DecodeError, Sum, SumMessage};

/// Generated gRPC code.
pub mod tally {
    /// Version 1 of the contract.
    pub mod v1 {
        tonic::include_proto!("tally.v1");
    }
}

/// The encoded `FileDescriptorSet` of `tally.proto`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tally_descriptor.bin"));
