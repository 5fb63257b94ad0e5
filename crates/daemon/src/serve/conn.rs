//! Serving connections within [`ConnLimits`]: a cap on open connections, timeouts for the
//! TLS handshake, for HTTP/1 headers and for idle connections, HTTP/2 keepalive pings and
//! bounds on HTTP/2 streams and header lists.
//!
//! The cap is a semaphore per listener: an accepted connection that finds no free place is
//! closed at once (never queued, so a flood costs a file descriptor for an instant), and a
//! connection holds its place until it is dropped. A connection is idle while no request is
//! in flight, where a request lasts until its response body has been sent or dropped; an
//! idle connection is shut down gracefully (nothing in flight is cut), and closed outright
//! if it still has not finished one header timeout later (a half-sent HTTP/2 header block, a
//! client that ignores GOAWAY). Upgraded connections (WebSockets) are never idle: their own
//! protocol decides when they end.
//!
//! The header timeout runs from the first byte of a request, not from the end of the one
//! before: hyper's own `header_read_timeout` starts when it begins waiting for the next
//! request, so it cut keep-alive connections that had been quiet for that long — abruptly,
//! while a client (Python's requests, a browser) might be sending on the connection it had
//! pooled, which then saw an EOF in place of an answer.

use std::convert::Infallible;
use std::io;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::ConnectInfo;
use axum::http::{HeaderMap, Method, Request, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tower::ServiceExt;

use crate::config::ConnLimits;

/// Interval of the HTTP/2 pings that find dead peers.
const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// How long a peer may take to answer a ping before its connection is closed.
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Streams one HTTP/2 connection may have open at once.
const H2_MAX_STREAMS: u32 = 128;
/// The largest request header list accepted (HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE`).
pub const MAX_HEADER_LIST: u32 = 16 << 10;
/// Most header fields of an HTTP/1 request.
const H1_MAX_HEADERS: usize = 64;

/// `AsyncWrite` for a wrapper whose stream is its field `io`: writes pass straight through.
macro_rules! delegate_write {
    ($wrapper:ident) => {
        impl<S: AsyncWrite + Unpin> AsyncWrite for $wrapper<S> {
            fn poll_write(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.io).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.io.is_write_vectored()
            }

            fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut self.io).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<io::Result<()>> {
                Pin::new(&mut self.io).poll_shutdown(cx)
            }
        }
    };
}

/// Places for at most `max` open connections; a connection holds its place until dropped.
#[derive(Debug, Clone)]
pub struct ConnCap(Arc<Semaphore>);

impl ConnCap {
    /// A cap of `max` connections.
    pub fn new(max: u32) -> Self {
        ConnCap(Arc::new(Semaphore::new(max as usize)))
    }

    /// `io` with a place, or `None` (the caller drops `io`, closing it) when all are taken.
    pub fn admit<S>(&self, io: S) -> Option<Counted<S>> {
        let place = self.0.clone().try_acquire_owned().ok()?;
        Some(Counted { io, _place: place })
    }
}

/// A listener whose connections each hold a place of a [`ConnCap`]; a connection that finds
/// none is closed as soon as it is accepted.
#[derive(Debug)]
pub struct Capped<L> {
    inner: L,
    cap: ConnCap,
}

impl<L> Capped<L> {
    /// `inner` with at most `max` connections open at once.
    pub fn new(inner: L, max: u32) -> Self {
        Capped {
            inner,
            cap: ConnCap::new(max),
        }
    }
}

impl<L: axum::serve::Listener> axum::serve::Listener for Capped<L> {
    type Io = Counted<L::Io>;
    type Addr = L::Addr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (io, addr) = self.inner.accept().await;
            match self.cap.admit(io) {
                Some(io) => return (io, addr),
                None => tracing::debug!("connection limit reached: closing a new connection"),
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection that holds a place of a [`ConnCap`].
#[derive(Debug)]
pub struct Counted<S> {
    io: S,
    _place: OwnedSemaphorePermit,
}

impl<S> Counted<S> {
    /// The connection.
    pub fn get_ref(&self) -> &S {
        &self.io
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

delegate_write!(Counted);

/// Serves `app` on every connection `listener` accepts, within `limits`, until `stop`
/// turns true; then lets open connections finish gracefully. `info` tells what each
/// request's [`ConnectInfo`] holds for the connection it came on.
pub async fn serve<L, T>(
    mut listener: L,
    app: Router,
    limits: ConnLimits,
    info: impl Fn(&L::Io, &L::Addr) -> T,
    mut stop: watch::Receiver<bool>,
) where
    L: axum::serve::Listener,
    L::Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: Clone + Send + Sync + 'static,
{
    let builder = Arc::new(http_builder());
    let mut connections = tokio::task::JoinSet::new();
    let conn_stop = stop.clone();
    loop {
        tokio::select! {
            (io, addr) = listener.accept() => {
                let info = info(&io, &addr);
                let conn = Connection {
                    app: app.clone(),
                    limits: limits.clone(),
                    stop: conn_stop.clone(),
                    activity: Arc::new(Activity::new()),
                };
                connections.spawn(conn.serve(builder.clone(), io, info));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// HTTP/1 and HTTP/2 (chosen by the client's first bytes) with the limits that need the
/// protocol's help (the HTTP/1 header timeout is [`Connection::serve`]'s).
fn http_builder() -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The header timeout is ours (see the module docs).
        .header_read_timeout(None)
        .max_headers(H1_MAX_HEADERS);
    builder
        .http2()
        .timer(TokioTimer::new())
        // WebSockets over HTTP/2 (RFC 8441), as axum's own server allows.
        .enable_connect_protocol()
        .keep_alive_interval(H2_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT)
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST);
    builder
}

/// One accepted connection being served.
struct Connection {
    app: Router,
    limits: ConnLimits,
    stop: watch::Receiver<bool>,
    activity: Arc<Activity>,
}

impl Connection {
    async fn serve<I, T>(self, builder: Arc<Builder<TokioExecutor>>, io: I, info: T)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        T: Clone + Send + Sync + 'static,
    {
        let Connection {
            app,
            limits,
            mut stop,
            activity,
        } = self;
        let tracked = activity.clone();
        let service = tower::service_fn(move |request: Request<Incoming>| {
            let (app, info) = (app.clone(), info.clone());
            let in_flight = tracked.begin(request.method(), request.headers());
            async move {
                let mut request = request.map(Body::new);
                request.extensions_mut().insert(ConnectInfo(info));
                let response = app.oneshot(request).await?;
                Ok::<_, Infallible>(response.map(|body| {
                    Body::new(InFlightBody {
                        body,
                        _in_flight: in_flight,
                    })
                }))
            }
        });
        let io = Watched {
            io,
            activity: activity.clone(),
            first_read: true,
            http2: false,
        };
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service));
        let mut conn = pin!(conn);
        let mut stopping = pin!(async move {
            let _ = stop.wait_for(|s| *s).await;
        });
        let (mut stopped, mut closing_since) = (false, None::<Instant>);
        loop {
            let wake = match (closing_since, activity.heading_since()) {
                (Some(since), _) => since + limits.header_timeout,
                (None, Some(since)) => since + limits.header_timeout,
                (None, None) => activity.idle_deadline(limits.idle_timeout),
            };
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                () = &mut stopping, if !stopped => {
                    stopped = true;
                    conn.as_mut().graceful_shutdown();
                }
                () = activity.heading.notified() => {}
                () = tokio::time::sleep_until(wake) => {
                    if closing_since.is_some() {
                        tracing::debug!("closing a connection that did not finish its shutdown");
                        return;
                    }
                    if activity
                        .heading_since()
                        .is_some_and(|since| since.elapsed() >= limits.header_timeout)
                    {
                        tracing::debug!("closing a connection whose request headers did not arrive in time");
                        return;
                    }
                    if activity.idle_at(limits.idle_timeout, Instant::now()) {
                        tracing::debug!("closing an idle connection");
                        conn.as_mut().graceful_shutdown();
                        closing_since = Some(Instant::now());
                    }
                }
            }
        }
    }
}

/// Whether a connection has requests in flight, and since when it has had none.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    upgraded: AtomicBool,
    quiet_since: Mutex<Instant>,
    /// When the first bytes of a request whose headers are not complete arrived.
    heading_since: Mutex<Option<Instant>>,
    /// Told when `heading_since` is set.
    heading: Notify,
}

impl Activity {
    fn new() -> Self {
        Activity {
            in_flight: AtomicUsize::new(0),
            upgraded: AtomicBool::new(false),
            quiet_since: Mutex::new(Instant::now()),
            heading_since: Mutex::new(None),
            heading: Notify::new(),
        }
    }

    /// Bytes arrived: on a quiet connection they start a request, whose headers must then
    /// be complete within the header timeout.
    fn read_some(&self) {
        if self.busy() {
            return;
        }
        let mut since = self.heading_since.lock().unwrap_or_else(|e| e.into_inner());
        if since.is_none() {
            *since = Some(Instant::now());
            // The connection's loop sleeps until its idle deadline: wake it to time this.
            self.heading.notify_one();
        }
    }

    /// Since when a request's headers have been arriving, if they have not all yet.
    fn heading_since(&self) -> Option<Instant> {
        *self.heading_since.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A request arrived; it is in flight until the returned guard is dropped.
    fn begin(self: &Arc<Self>, method: &Method, headers: &HeaderMap) -> InFlight {
        // A WebSocket (HTTP/1 upgrade or HTTP/2 extended CONNECT) outlives its response.
        if method == Method::CONNECT || headers.contains_key(header::UPGRADE) {
            self.upgraded.store(true, Ordering::Relaxed);
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        *self.heading_since.lock().unwrap_or_else(|e| e.into_inner()) = None;
        InFlight(self.clone())
    }

    fn quiet_since(&self) -> Instant {
        *self.quiet_since.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// When the connection will have been idle for `timeout` if nothing happens; a while
    /// ahead when it is busy (it is looked at again then).
    fn idle_deadline(&self, timeout: Duration) -> Instant {
        if self.busy() {
            Instant::now() + timeout
        } else {
            self.quiet_since() + timeout
        }
    }

    fn busy(&self) -> bool {
        self.upgraded.load(Ordering::Relaxed) || self.in_flight.load(Ordering::Relaxed) > 0
    }

    /// Whether at `now` the connection has been idle for `timeout`.
    fn idle_at(&self, timeout: Duration, now: Instant) -> bool {
        !self.busy() && now.saturating_duration_since(self.quiet_since()) >= timeout
    }
}

/// A connection's byte stream, telling its [`Activity`] when bytes arrive.
struct Watched<I> {
    io: I,
    activity: Arc<Activity>,
    first_read: bool,
    http2: bool,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        let read = &buf.filled()[before..];
        if matches!(polled, Poll::Ready(Ok(()))) && !read.is_empty() {
            if self.first_read {
                // HTTP/2 (its preface starts `PRI`) bounds header blocks itself, and its
                // idle connections carry PING frames: no header clock there.
                self.http2 = read.starts_with(b"PRI");
                self.first_read = false;
            }
            if !self.http2 {
                self.activity.read_some();
            }
        }
        polled
    }
}

delegate_write!(Watched);

/// A request in flight; its end restarts the connection's idle clock.
#[derive(Debug)]
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.quiet_since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request in flight until it is sent or dropped.
struct InFlightBody {
    body: Body,
    _in_flight: InFlight,
}

impl HttpBody for InFlightBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_closes_what_finds_no_place_and_a_drop_frees_one() {
        let cap = ConnCap::new(2);
        let first = cap.admit(1).unwrap();
        let _second = cap.admit(2).unwrap();
        assert!(cap.admit(3).is_none());
        drop(first);
        assert_eq!(*cap.admit(4).unwrap().get_ref(), 4);
    }

    #[test]
    fn a_connection_is_idle_only_without_requests_in_flight() {
        let activity = Arc::new(Activity::new());
        let timeout = Duration::from_secs(5);
        let later = |n: u32| Instant::now() + timeout * n;
        assert!(!activity.idle_at(timeout, Instant::now()));
        assert!(activity.idle_at(timeout, later(2)));
        let request = activity.begin(&Method::GET, &HeaderMap::new());
        assert!(
            !activity.idle_at(timeout, later(10)),
            "a slow response is not idleness"
        );
        drop(request);
        let ended = Instant::now();
        assert!(
            !activity.idle_at(timeout, ended),
            "the clock restarts when a request ends"
        );
        assert!(activity.idle_at(timeout, ended + timeout * 2));
        let mut upgrade = HeaderMap::new();
        upgrade.insert(header::UPGRADE, "websocket".parse().unwrap());
        drop(activity.begin(&Method::GET, &upgrade));
        assert!(
            !activity.idle_at(timeout, later(10)),
            "a WebSocket is never idle"
        );
    }
}
