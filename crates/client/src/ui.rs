//! The web console's address for this endpoint: on the unix socket a one-time login link
//! corrald makes for the caller (on its local 127.0.0.1 listener); on TCP the console's page,
//! which asks for a token (or takes the browser's client certificate).

use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;

use crate::{ClientError, Endpoint};

/// Where to open the web console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleLink {
    /// The URL to open.
    pub url: String,
    /// Seconds the URL logs a browser in for (one use), when it is a login link.
    pub expires_in: Option<u64>,
}

/// The web console's URL for `endpoint`'s caller.
pub async fn console_link(endpoint: &Endpoint) -> Result<ConsoleLink, ClientError> {
    let socket = match endpoint {
        Endpoint::Https { url, .. } => {
            return Ok(ConsoleLink {
                url: format!("{}/ui/", url.trim_end_matches('/')),
                expires_in: None,
            });
        }
        Endpoint::Unix(socket) => socket,
    };
    let unavailable = |message: String| ClientError::Unavailable {
        endpoint: socket.display().to_string(),
        message,
    };
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    tokio::spawn(conn);
    let request = hyper::Request::post("/v1/ui/links")
        .header("host", "localhost")
        .header("content-length", "0")
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .map_err(|e| ClientError::Config {
            message: e.to_string(),
        })?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| unavailable(e.to_string()))?
        .to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if !status.is_success() {
        let message = json["error"]["message"]
            .as_str()
            .map_or_else(|| status.to_string(), str::to_owned);
        return Err(match status.as_u16() {
            401 => ClientError::Unauthenticated { message },
            403 => ClientError::PermissionDenied { message },
            _ => unavailable(message),
        });
    }
    let url = json["url"].as_str().ok_or_else(|| {
        unavailable(format!(
            "corrald answered no link: {}",
            String::from_utf8_lossy(&body)
        ))
    })?;
    Ok(ConsoleLink {
        url: url.to_owned(),
        expires_in: json["expiresInSeconds"].as_u64(),
    })
}
