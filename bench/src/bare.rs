//! The bare servers the front ends are compared with: a tonic server of the
//! same `tally.v1.Adder` that answers `a + b` at once, and a warp server
//! whose `GET /sum` answers a constant. Each runs in its own process (the
//! harness starts itself with a hidden subcommand), on tokio's default
//! multi-threaded runtime like the services, and exits by itself after
//! `MAX_LIFETIME` should the harness die first.

use std::{net::SocketAddr, time::Duration};

use proto::tally::v1::{
    AddRequest, AddResponse,
    adder_server::{Adder, AdderServer},
};
use serde_json::json;
use tonic::{Request, Response, Status};
use warp::Filter;

/// A bare server never outlives this, whatever happens to the harness.
pub const MAX_LIFETIME: Duration = Duration::from_secs(900);

struct Bare;

#[tonic::async_trait]
impl Adder for Bare {
    async fn add(&self, request: Request<AddRequest>) -> Result<Response<AddResponse>, Status> {
        let AddRequest { a, b, .. } = request.into_inner();
        Ok(Response::new(AddResponse {
            sum: a.wrapping_add(b),
            outbox_id: 0,
            replayed: false,
        }))
    }
}

/// Serves the bare tonic Adder on `addr`.
pub async fn tonic(addr: SocketAddr) -> anyhow::Result<()> {
    tonic::transport::Server::builder()
        .add_service(AdderServer::new(Bare))
        .serve_with_shutdown(addr, tokio::time::sleep(MAX_LIFETIME))
        .await?;
    Ok(())
}

/// Serves the bare warp `GET /sum` on `addr`.
pub async fn warp(addr: SocketAddr) -> anyhow::Result<()> {
    let sum = warp::path!("sum")
        .and(warp::get())
        .map(|| warp::reply::json(&json!({"sum": 0})));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    warp::serve(sum)
        .incoming(listener)
        .graceful(tokio::time::sleep(MAX_LIFETIME))
        .run()
        .await;
    Ok(())
}
