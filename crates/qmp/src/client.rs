//! The connection: a reader task that owns the read half, a writer task that owns the
//! write half, and replies matched to callers by the numeric `id` of each command.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::line::{LineError, LineReader};
use crate::{CloseReason, Error, Event, EventKind, Greeting, QemuVersion, QmpConfig, Timestamp};

/// Requests queued for the writer task before callers wait for room.
const WRITE_QUEUE: usize = 64;
/// How much of a bad line goes into a log message.
const EXCERPT_CHARS: usize = 200;

/// An async QMP client.
///
/// Cheap to clone: clones share one connection. Commands may be issued concurrently
/// from any task. The connection (and its background tasks) ends when QEMU closes it,
/// on a protocol violation that makes the stream untrustworthy, or when the last clone
/// is dropped.
#[derive(Clone)]
pub struct Qmp {
    inner: Arc<Inner>,
}

struct Inner {
    greeting: Greeting,
    config: QmpConfig,
    shared: Arc<Shared>,
    requests: mpsc::Sender<Vec<u8>>,
    // Never sent on; dropping it (with the last `Qmp` clone) stops both tasks.
    _alive: watch::Sender<()>,
}

/// State shared by the client handles and the background tasks.
struct Shared {
    state: Mutex<State>,
    closed: watch::Sender<Option<CloseReason>>,
    next_id: AtomicU64,
}

struct State {
    closed: bool,
    pending: HashMap<u64, oneshot::Sender<Result<Reply, Error>>>,
    // Taken on close so that subscribers see the end of the stream.
    events: Option<broadcast::Sender<Event>>,
}

/// A reply as the reader found it; the caller turns it into a result.
#[derive(Debug)]
enum Reply {
    Return(Value),
    Error { class: String, desc: String },
    Malformed(String),
}

#[derive(Serialize)]
struct Request<'a> {
    execute: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    arguments: Option<&'a Value>,
    id: u64,
}

impl Qmp {
    /// Connects to a QMP unix socket, reads the greeting and negotiates capabilities,
    /// with the default [`QmpConfig`].
    pub async fn connect(path: impl AsRef<Path>) -> Result<Qmp, Error> {
        Self::connect_with(path, QmpConfig::default()).await
    }

    /// Connects to a QMP unix socket, reads the greeting and negotiates capabilities.
    ///
    /// Connecting and reading the greeting together take at most
    /// [`QmpConfig::greeting_timeout`].
    pub async fn connect_with(path: impl AsRef<Path>, config: QmpConfig) -> Result<Qmp, Error> {
        let path = path.as_ref();
        let connect = UnixStream::connect(path);
        let stream = match tokio::time::timeout(config.greeting_timeout, connect).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => {
                return Err(Error::Io {
                    path: Some(path.to_owned()),
                    source,
                });
            }
            Err(_) => return Err(no_greeting(config.greeting_timeout)),
        };
        Self::handshake(stream, Some(path.to_owned()), config).await
    }

    /// Like [`Qmp::connect_with`], over an already connected stream.
    pub async fn from_stream(stream: UnixStream, config: QmpConfig) -> Result<Qmp, Error> {
        let path = stream
            .peer_addr()
            .ok()
            .and_then(|addr| addr.as_pathname().map(Path::to_owned));
        Self::handshake(stream, path, config).await
    }

    async fn handshake(
        stream: UnixStream,
        path: Option<PathBuf>,
        config: QmpConfig,
    ) -> Result<Qmp, Error> {
        let (read, write) = stream.into_split();
        let mut lines = LineReader::new(read, config.max_line_bytes);
        let greeting = tokio::time::timeout(
            config.greeting_timeout,
            read_greeting(&mut lines, path, config.max_line_bytes),
        )
        .await
        .map_err(|_| no_greeting(config.greeting_timeout))??;

        let (events, _) = broadcast::channel(config.event_capacity.max(1));
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                closed: false,
                pending: HashMap::new(),
                events: Some(events),
            }),
            closed: watch::Sender::new(None),
            next_id: AtomicU64::new(1),
        });
        let (alive, _) = watch::channel(());
        let (requests, requests_rx) = mpsc::channel(WRITE_QUEUE);
        tokio::spawn(read_loop(
            shared.clone(),
            lines,
            alive.subscribe(),
            config.max_line_bytes,
        ));
        tokio::spawn(write_loop(
            shared.clone(),
            write,
            requests_rx,
            alive.subscribe(),
        ));
        let qmp = Qmp {
            inner: Arc::new(Inner {
                greeting,
                config,
                shared,
                requests,
                _alive: alive,
            }),
        };

        match qmp.execute("qmp_capabilities", None).await {
            Ok(_) => Ok(qmp),
            Err(Error::Qmp { class, desc, .. }) => Err(Error::Protocol {
                reason: format!("capabilities negotiation failed: {class}: {desc}"),
            }),
            Err(err) => Err(err),
        }
    }

    /// The greeting QEMU sent when the connection was made.
    pub fn greeting(&self) -> &Greeting {
        &self.inner.greeting
    }

    /// A receiver of the events QEMU sends from now on, in the order it sent them.
    ///
    /// Events arriving while nobody is subscribed are dropped; a receiver that falls more
    /// than [`QmpConfig::event_capacity`] events behind gets
    /// [`RecvError::Lagged`](broadcast::error::RecvError::Lagged). Once the connection
    /// is closed, receivers report `RecvError::Closed` after the remaining events.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        match &self.inner.shared.lock().events {
            Some(events) => events.subscribe(),
            None => broadcast::channel(1).1,
        }
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.inner.shared.closed.borrow().is_some()
    }

    /// Resolves when the connection is gone, with the reason. May be called any number
    /// of times, from any number of clones.
    pub async fn closed(&self) -> CloseReason {
        let mut closed = self.inner.shared.closed.subscribe();
        let reason = match closed.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            // The sender lives in `Shared`, which `self` keeps alive.
            Err(_) => None,
        };
        reason.unwrap_or(CloseReason::Eof)
    }

    /// Executes any command with the default timeout and returns its raw `return` value.
    ///
    /// `args` of `None` sends no `arguments` member.
    pub async fn execute(&self, command: &str, args: Option<Value>) -> Result<Value, Error> {
        self.execute_with_timeout(command, args, self.inner.config.command_timeout)
            .await
    }

    /// Executes any command, waiting at most `timeout` for its reply (including time to
    /// send it). A reply arriving later is dropped.
    pub async fn execute_with_timeout(
        &self,
        command: &str,
        args: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, Error> {
        match tokio::time::timeout(timeout, self.call(command, args.as_ref())).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout {
                command: command.to_owned(),
                after: timeout,
            }),
        }
    }

    async fn call(&self, command: &str, args: Option<&Value>) -> Result<Value, Error> {
        let shared = &self.inner.shared;
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let request = Request {
            execute: command,
            arguments: args,
            id,
        };
        let mut line = serde_json::to_vec(&request).map_err(|err| Error::Protocol {
            reason: format!("cannot encode command '{command}': {err}"),
        })?;
        line.push(b'\n');

        let (tx, rx) = oneshot::channel();
        let _pending = shared.register(id, tx)?;
        self.inner
            .requests
            .send(line)
            .await
            .map_err(|_| Error::Closed)?;
        match rx.await.map_err(|_| Error::Closed)?? {
            Reply::Return(value) => Ok(value),
            Reply::Error { class, desc } => Err(Error::Qmp {
                command: command.to_owned(),
                class,
                desc,
            }),
            Reply::Malformed(reason) => Err(Error::Protocol {
                reason: format!("malformed error reply to '{command}': {reason}"),
            }),
        }
    }
}

impl fmt::Debug for Qmp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Qmp")
            .field("version", &self.inner.greeting.version)
            .field("closed", &*self.inner.shared.closed.borrow())
            .field("pending", &self.inner.shared.lock().pending.len())
            .finish()
    }
}

/// Removes a command's waiter when its caller stops waiting (reply, timeout or
/// cancellation), so that a late reply finds no one.
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.lock().pending.remove(&self.id);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // No code panics while holding the lock; if it ever did, the map is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn register(
        &self,
        id: u64,
        waiter: oneshot::Sender<Result<Reply, Error>>,
    ) -> Result<PendingGuard<'_>, Error> {
        let mut state = self.lock();
        if state.closed {
            return Err(Error::Closed);
        }
        state.pending.insert(id, waiter);
        Ok(PendingGuard { shared: self, id })
    }

    /// Marks the connection closed, fails every waiter and ends the event stream.
    /// Only the first call has an effect.
    fn close(&self, reason: CloseReason) {
        let (pending, events) = {
            let mut state = self.lock();
            if state.closed {
                return;
            }
            state.closed = true;
            (std::mem::take(&mut state.pending), state.events.take())
        };
        tracing::debug!(%reason, pending = pending.len(), "QMP connection closed");
        for waiter in pending.into_values() {
            let error = match reason {
                CloseReason::LineTooLong { limit } => Error::LineTooLong { limit },
                CloseReason::Eof | CloseReason::Io(_) => Error::Closed,
            };
            // The caller may have given up already.
            let _ = waiter.send(Err(error));
        }
        drop(events);
        self.closed.send_replace(Some(reason));
    }

    /// Handles one line from the peer. Lines that are not QMP messages are logged and
    /// skipped: one bad line does not make the rest of the stream unreadable.
    fn dispatch(&self, line: &[u8]) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let message = match serde_json::from_slice::<Value>(line) {
            Ok(Value::Object(message)) => message,
            Ok(_) => {
                tracing::warn!(line = %excerpt(line), "skipping QMP line that is not a JSON object");
                return;
            }
            Err(err) => {
                tracing::warn!(error = %err, line = %excerpt(line), "skipping QMP line that is not JSON");
                return;
            }
        };
        if message.contains_key("event") {
            self.dispatch_event(message, line);
        } else if message.contains_key("return") || message.contains_key("error") {
            self.dispatch_reply(message, line);
        } else {
            tracing::warn!(line = %excerpt(line), "skipping QMP message that is neither a reply nor an event");
        }
    }

    fn dispatch_event(&self, mut message: Map<String, Value>, line: &[u8]) {
        let Some(Value::String(name)) = message.remove("event") else {
            tracing::warn!(line = %excerpt(line), "skipping QMP event without a name");
            return;
        };
        let data = message.remove("data").unwrap_or(Value::Null);
        let timestamp = message
            .get("timestamp")
            .and_then(|timestamp| Timestamp::deserialize(timestamp).ok());
        let event = Event {
            kind: EventKind::parse(&name, &data),
            data,
            timestamp,
        };
        if let Some(events) = &self.lock().events {
            // Having no subscribers is not an error.
            let _ = events.send(event);
        }
    }

    fn dispatch_reply(&self, mut message: Map<String, Value>, line: &[u8]) {
        let Some(id) = message.get("id").and_then(Value::as_u64) else {
            // QEMU answers requests it could not parse without an id.
            tracing::warn!(line = %excerpt(line), "skipping QMP reply without an id this client sent");
            return;
        };
        let reply = match message.remove("error") {
            Some(error) => match QmpError::deserialize(&error) {
                Ok(QmpError { class, desc }) => Reply::Error { class, desc },
                Err(err) => {
                    Reply::Malformed(format!("{err}: {}", excerpt(error.to_string().as_bytes())))
                }
            },
            None => Reply::Return(message.remove("return").unwrap_or(Value::Null)),
        };
        match self.lock().pending.remove(&id) {
            Some(waiter) => {
                let _ = waiter.send(Ok(reply));
            }
            None => tracing::debug!(
                id,
                "dropping QMP reply nobody waits for (timed out or cancelled)"
            ),
        }
    }
}

#[derive(Deserialize)]
struct QmpError {
    class: String,
    desc: String,
}

async fn read_loop(
    shared: Arc<Shared>,
    mut lines: LineReader<OwnedReadHalf>,
    mut alive: watch::Receiver<()>,
    limit: usize,
) {
    let mut closed = shared.closed.subscribe();
    loop {
        let line = tokio::select! {
            _ = alive.changed() => return,
            _ = closed.wait_for(Option::is_some) => return,
            line = lines.next_line() => line,
        };
        let reason = match line {
            Ok(line) => {
                shared.dispatch(line);
                continue;
            }
            Err(LineError::Eof) => CloseReason::Eof,
            Err(LineError::Io(err)) => CloseReason::Io(Arc::new(err)),
            Err(LineError::TooLong) => {
                tracing::warn!(
                    limit,
                    "QMP peer sent an overlong line; closing the connection"
                );
                CloseReason::LineTooLong { limit }
            }
        };
        shared.close(reason);
        return;
    }
}

async fn write_loop(
    shared: Arc<Shared>,
    mut write: OwnedWriteHalf,
    mut requests: mpsc::Receiver<Vec<u8>>,
    mut alive: watch::Receiver<()>,
) {
    let mut closed = shared.closed.subscribe();
    loop {
        let request = tokio::select! {
            _ = alive.changed() => break,
            _ = closed.wait_for(Option::is_some) => break,
            request = requests.recv() => match request {
                Some(request) => request,
                None => break,
            },
        };
        // A peer that stops reading must not keep this task (and the socket) alive.
        let written = tokio::select! {
            _ = alive.changed() => break,
            _ = closed.wait_for(Option::is_some) => break,
            written = write.write_all(&request) => written,
        };
        if let Err(err) = written {
            shared.close(CloseReason::Io(Arc::new(err)));
            break;
        }
    }
    let _ = write.shutdown().await;
}

async fn read_greeting(
    lines: &mut LineReader<OwnedReadHalf>,
    path: Option<PathBuf>,
    limit: usize,
) -> Result<Greeting, Error> {
    #[derive(Deserialize)]
    struct Wire {
        #[serde(rename = "QMP")]
        qmp: Body,
    }
    #[derive(Deserialize)]
    struct Body {
        version: Version,
        capabilities: Vec<String>,
    }
    #[derive(Deserialize)]
    struct Version {
        qemu: Triple,
        package: String,
    }
    #[derive(Deserialize)]
    struct Triple {
        major: u32,
        minor: u32,
        micro: u32,
    }

    let line = match lines.next_line().await {
        Ok(line) => line,
        Err(LineError::Eof) => {
            return Err(Error::Protocol {
                reason: "connection closed before the QMP greeting".into(),
            });
        }
        Err(LineError::TooLong) => return Err(Error::LineTooLong { limit }),
        Err(LineError::Io(source)) => return Err(Error::Io { path, source }),
    };
    let wire: Wire = serde_json::from_slice(line).map_err(|err| Error::Protocol {
        reason: format!("invalid QMP greeting ({err}): {}", excerpt(line)),
    })?;
    let Wire {
        qmp:
            Body {
                version: Version { qemu, package },
                capabilities,
            },
    } = wire;
    Ok(Greeting {
        version: QemuVersion {
            major: qemu.major,
            minor: qemu.minor,
            micro: qemu.micro,
            package,
        },
        capabilities,
    })
}

fn no_greeting(after: Duration) -> Error {
    Error::Protocol {
        reason: format!("no QMP greeting within {after:?}"),
    }
}

/// The start of a line, lossily decoded, for log messages.
fn excerpt(line: &[u8]) -> String {
    // Four bytes per char at most; never decode a multi-megabyte line.
    let head = &line[..line.len().min(EXCERPT_CHARS * 4)];
    let text = String::from_utf8_lossy(head);
    let mut chars = text.chars();
    let mut out: String = chars.by_ref().take(EXCERPT_CHARS).collect();
    if chars.next().is_some() || head.len() < line.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::excerpt;

    #[test]
    fn excerpt_truncates_on_char_boundaries() {
        assert_eq!(excerpt(b"short"), "short");
        let long = "é".repeat(1000);
        let cut = excerpt(long.as_bytes());
        assert_eq!(cut.chars().count(), 201);
        assert!(cut.ends_with('…'));
        assert_eq!(excerpt(&[0xff, b'a']), "\u{fffd}a");
    }
}
