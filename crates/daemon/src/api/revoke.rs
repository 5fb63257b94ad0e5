//! Open streams end when their caller's identity is revoked: the authorization layer wraps
//! the answer's body, which then ends a gRPC stream with `UNAUTHENTICATED` in its trailers
//! and breaks off any other (a REST watch, a memory stream).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;
use http_body::{Frame, SizeHint};

/// What a revoked stream is told.
pub const REVOKED: &str = "the caller's identity was revoked";

type Revocation = Pin<Box<dyn Future<Output = ()> + Send>>;

/// `response` with a body that ends once `revoked` resolves. A body of known size is whole
/// already and is left as it is.
pub fn until_revoked(
    response: Response,
    revoked: impl Future<Output = ()> + Send + 'static,
    grpc: bool,
) -> Response {
    if response.body().size_hint().exact().is_some() {
        return response;
    }
    response.map(|inner| {
        Body::new(Revocable {
            inner,
            revoked: Box::pin(revoked),
            grpc,
            done: false,
        })
    })
}

struct Revocable {
    inner: Body,
    revoked: Revocation,
    grpc: bool,
    done: bool,
}

impl HttpBody for Revocable {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.revoked.as_mut().poll(cx).is_ready() {
            self.done = true;
            if !self.grpc {
                return Poll::Ready(Some(Err(axum::Error::new(REVOKED))));
            }
            let mut trailers = HeaderMap::new();
            // 16: UNAUTHENTICATED.
            trailers.insert("grpc-status", HeaderValue::from_static("16"));
            trailers.insert(
                "grpc-message",
                HeaderValue::from_static("the%20caller's%20identity%20was%20revoked"),
            );
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.done = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        // The body may end early: only its lower bound holds.
        let mut hint = SizeHint::new();
        hint.set_lower(self.inner.size_hint().lower());
        hint
    }
}
