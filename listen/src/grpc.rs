//! What tonic needs to serve an [`Incoming`](crate::Incoming) that closes
//! quiet connections: `Connected` for [`Conn`], whose [`ConnectInfo`] carries
//! the connection's open [`Streams`], and [`CountStreams`], the service
//! wrapper that counts each request as an open stream until its response
//! body is dropped. It knows no routes.

use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use hyper::{
    Request, Response,
    body::{Body, Frame, SizeHint},
};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::{
    Conn,
    quiet::{StreamGuard, Streams},
};

/// What tonic puts in every request's extensions about its connection.
#[derive(Clone, Debug)]
pub struct ConnectInfo {
    /// The addresses; [`CountStreams`] also inserts it on its own, so that
    /// `tonic::Request::remote_addr` answers.
    pub tcp: TcpConnectInfo,
    /// The connection's open streams, when it closes quiet connections.
    pub streams: Option<Streams>,
}

/// A service whose requests count as open streams of their connection.
#[derive(Clone, Debug)]
pub struct CountStreams<S> {
    inner: S,
}

/// A response body that holds its stream open until it is dropped.
pub struct CountedBody<B> {
    inner: B,
    _stream: Option<StreamGuard>,
}

impl Connected for Conn {
    type ConnectInfo = ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        ConnectInfo {
            tcp: self.stream.connect_info(),
            streams: self.watch.as_ref().map(|watch| watch.streams.clone()),
        }
    }
}

impl<S> CountStreams<S> {
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S, B, R> tower_service::Service<Request<B>> for CountStreams<S>
where
    S: tower_service::Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
{
    type Response = Response<CountedBody<R>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let info = request.extensions().get::<ConnectInfo>().cloned();
        let stream = info
            .as_ref()
            .and_then(|info| info.streams.as_ref())
            .map(Streams::open);
        if let Some(info) = info {
            request.extensions_mut().insert(info.tcp);
        }
        let call = self.inner.call(request);
        Box::pin(async move {
            let response = call.await?;
            Ok(response.map(|inner| CountedBody {
                inner,
                _stream: stream,
            }))
        })
    }
}

impl<B: Body + Unpin> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
