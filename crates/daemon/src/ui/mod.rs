//! The web console: its assets (built from the repository's `ui/` by `build.rs` and embedded
//! in the binary), browser sessions, and the local listener `corral ui` links to.
//!
//! A browser never holds a bearer token: logging in (a token typed into the login form on a
//! TCP listener, or a one-time link from `corral ui` on the unix socket) starts a session,
//! whose secret is an `HttpOnly; SameSite=Strict` cookie tied to the caller who logged in.
//! The UI only calls the public API, so every role, grant and project check applies to it
//! unchanged. Against cross-site requests — `SameSite` does not separate ports of one host —
//! a request that the cookie identifies must come from the listener's own origin (its
//! `Origin` header names the `Host` it was sent to), and only reads may come without one.

pub(crate) mod rest;
mod sessions;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use tokio::sync::{OnceCell, watch};

pub use sessions::Sessions;

use crate::auth::{Caller, Unidentified};
use crate::config::ConnLimits;

/// The session cookie's name.
pub const COOKIE: &str = "corral_session";

/// The built console, embedded: `(file name, bytes)`, and whether it was built from `ui/`
/// (else a page that says how to build it).
mod assets {
    include!(concat!(env!("OUT_DIR"), "/ui_assets.rs"));
}

/// The embedded file `name`, if there is one.
pub fn asset(name: &str) -> Option<&'static [u8]> {
    assets::ASSETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, bytes)| *bytes)
}

/// Whether the embedded console was built from `ui/` (not the page saying how to build it).
pub const BUILT: bool = assets::BUILT;

/// What the console needs at run time.
#[derive(Debug, Default)]
pub struct Ui {
    /// Browser sessions and one-time login codes.
    pub sessions: Arc<Sessions>,
    local: OnceCell<SocketAddr>,
    serving: OnceLock<(Router, ConnLimits, watch::Receiver<bool>)>,
}

impl Ui {
    /// Hands over what the local listener serves, once the router is built; it is bound on
    /// the first `corral ui`.
    pub fn serve_locally_with(&self, app: Router, limits: ConnLimits, stop: watch::Receiver<bool>) {
        let _ = self.serving.set((app, limits, stop));
    }

    /// The address of the local listener on 127.0.0.1, bound on first use.
    pub async fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.local
            .get_or_try_init(|| async {
                let (app, limits, stop) = self
                    .serving
                    .get()
                    .cloned()
                    .ok_or_else(|| std::io::Error::other("the daemon is still starting"))?;
                let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
                let addr = listener.local_addr()?;
                tracing::info!(%addr, "serving the web console locally");
                let capped = crate::serve::Capped::new(listener, limits.max_connections);
                tokio::spawn(crate::serve::serve(
                    capped,
                    app,
                    limits,
                    |_: &_, addr: &SocketAddr| *addr,
                    stop,
                ));
                Ok(addr)
            })
            .await
            .copied()
    }
}

/// The session secret a request's cookie carries.
pub fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// Refuses a cookie-identified request another site could have made: one whose `Origin` is
/// not the listener's own, or a change (or WebSocket) sent without `Origin`.
pub fn same_origin(method: &Method, headers: &HeaderMap, host: Option<&str>) -> Result<(), String> {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let Some(origin) = origin else {
        let upgrade = headers.contains_key(header::UPGRADE);
        return if (method == Method::GET || method == Method::HEAD) && !upgrade {
            Ok(())
        } else {
            Err(format!(
                "{method} with the session cookie but without an Origin header: a browser \
                 session may only change things from the console's own pages"
            ))
        };
    };
    let authority = origin
        .strip_prefix("https://")
        .or_else(|| origin.strip_prefix("http://"));
    match (authority, host) {
        (Some(a), Some(h)) if a.eq_ignore_ascii_case(h) => Ok(()),
        _ => Err(format!(
            "a request with Origin {origin} and the session cookie of {}: a browser session \
             only answers the console's own pages",
            host.unwrap_or("this listener")
        )),
    }
}

/// The host a request was sent to (`Host`, or the HTTP/2 authority).
pub fn host(request: &Request) -> Option<String> {
    request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().authority().map(|a| a.to_string()))
}

/// The caller a request's session cookie names, if any: `Err` when it names one but the
/// request comes from another origin, or the session is over.
pub fn session_caller(sessions: &Sessions, request: &Request) -> Option<Result<Caller, String>> {
    let secret = cookie(request.headers())?;
    let host = host(request);
    Some(
        same_origin(request.method(), request.headers(), host.as_deref()).and_then(|()| {
            sessions.caller(secret).ok_or_else(|| {
                "the browser session is over (expired, logged out or the daemon restarted): \
                 log in again"
                    .to_owned()
            })
        }),
    )
}

/// Whether `path` is the console's own (assets, login): answered without a caller, since the
/// login page must load before anyone has logged in. They show no object.
pub fn is_console_path(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}

/// Middleware on the local listener: identifies the caller by its session cookie only.
pub async fn local_caller(
    State(sessions): State<Arc<Sessions>>,
    mut request: Request,
    next: Next,
) -> Response {
    match session_caller(&sessions, &request) {
        Some(Ok(caller)) => {
            request.extensions_mut().insert(caller);
        }
        Some(Err(why)) => {
            request.extensions_mut().insert(Unidentified {
                name: "session:unknown".into(),
                why,
            });
        }
        None => {
            request.extensions_mut().insert(Unidentified {
                name: "anonymous".into(),
                why: "no browser session: run `corral ui` for a login link".into(),
            });
        }
    }
    next.run(request).await
}
