//! The tower stack every proxied request goes through, assembled here and
//! nowhere else, outermost layer first. `server` runs it per connection;
//! `proxy::handle` is its innermost service.

use std::any::Any;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt as _;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tower::{Service, ServiceBuilder};
use tower_http::catch_panic::CatchPanicLayer;

use crate::decide::client_ip::PeerAddr;
use crate::denial::xmlapi_error;
use crate::proxy::{handle, Shared};

/// Builds the stack for one client connection from `peer`.
pub fn proxy(
    shared: Arc<Shared>,
    peer: PeerAddr,
    body_idle_timeout: Duration,
) -> impl Service<
    Request<Incoming>,
    Response = Response<impl http_body::Body<Data = Bytes, Error = impl Into<tower_http::BoxError>> + Send + 'static>,
    Error = Infallible,
    Future = impl Send + 'static,
> + Clone
       + Send
       + 'static {
    ServiceBuilder::new()
        // A bug that panics answers one request with a 500 in the XMLAPI's
        // shape; the connection, the process and every other request go on.
        // The panic message is not sent: it could quote request data.
        .layer(CatchPanicLayer::custom(panic_answer))
        // Decide, then refuse or forward (interface.md §5, §6). The body's
        // idle timeout is put on in `handle`, after it has looked at the
        // body's size (the timeout wrapper hides it).
        .service_fn(move |req| handle(shared.clone(), peer, body_idle_timeout, req).map(Ok::<_, Infallible>))
}

fn panic_answer(_payload: Box<dyn Any + Send + 'static>) -> Response<Full<Bytes>> {
    xmlapi_error(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", "The gateway failed to handle the request", false)
        .map(Full::new)
}
