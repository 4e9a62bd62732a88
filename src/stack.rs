//! The tower stack every proxied request goes through, assembled here and
//! nowhere else, outermost layer first. `server` runs it per connection;
//! [`crate::proxy::handle`] is its innermost service. Generic over the
//! request body, so that tests can drive the whole stack in-process
//! (`tower::ServiceExt::oneshot`).

use std::any::Any;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt as _;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tower::{Service, ServiceBuilder};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::BoxError;

use crate::decide::client_ip::PeerAddr;
use crate::denial::GatewayError;
use crate::proxy::{handle, GatewayState};

/// Builds the stack for one client connection from `peer`.
pub fn proxy<B>(
    gateway: Arc<GatewayState>,
    peer: PeerAddr,
) -> impl Service<
    Request<B>,
    Response = Response<impl Body<Data = Bytes, Error = impl Into<BoxError>> + Send + 'static>,
    Error = Infallible,
    Future = impl Send + 'static,
> + Clone
       + Send
       + 'static
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    ServiceBuilder::new()
        // A bug that panics answers one request with a 500 in the XMLAPI's
        // shape; the connection, the process and every other request go on.
        // The panic message is not sent: it could quote request data.
        .layer(CatchPanicLayer::custom(panic_answer))
        // The stages of one request (interface.md §5, §6): inspect the
        // body, gather, decide, count, rewrite, forward.
        .service_fn(move |req| handle(gateway.clone(), peer, req).map(Ok::<_, Infallible>))
}

fn panic_answer(_payload: Box<dyn Any + Send + 'static>) -> Response<Full<Bytes>> {
    GatewayError::Internal.into_response(false).map(Full::new)
}
