//! The guest agent channel: a virtio-serial port named `org.qemu.guest_agent.0` that
//! qemu-guest-agent in the guest (Debian images built by `corral image build` have it)
//! answers on, and a small client for the few commands corrald sends: after a start from a
//! template's saved state, the guest is told its own hostname and the MACs its NICs now
//! have. Commands run programs by path with separate arguments; no shell is involved.
//!
//! The socket is bound by corrald in the VM's private directory and inherited by QEMU, like
//! the console's. A guest without an agent simply never answers: every call has a deadline.

use std::time::{Duration, Instant};

use corral_contract::Machine;
use corral_hypervisor::{Error, VmConfig};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::cmdline::{OptList, QemuCommand};

/// The port name qemu-guest-agent opens.
const PORT: &str = "org.qemu.guest_agent.0";
/// The most bytes corrald reads for one reply, or skips before the sync mark: the guest
/// writes this channel, and must not make corrald hold what it likes.
const MAX_READ: u64 = 1 << 20;

/// The descriptor QEMU inherits the agent's listening socket at: after the TAPs and the
/// shares' sockets.
pub(crate) fn agent_fd(config: &VmConfig) -> i32 {
    let taps = crate::net::taps(config).count() as i32;
    crate::net::FIRST_TAP_FD + taps + config.shares.len() as i32
}

/// Appends the virtio-serial controller and the agent's port.
pub(crate) fn add_agent(cmd: &mut QemuCommand, config: &VmConfig) {
    let controller = if config.machine == Machine::Microvm {
        "virtio-serial-device"
    } else {
        "virtio-serial-pci"
    };
    cmd.opts("-device", OptList::new(controller).set("id", "vser0"));
    cmd.opts(
        "-chardev",
        OptList::new("socket")
            .set("id", "agent")
            .set("fd", agent_fd(config).to_string())
            .flag("server", true)
            .flag("wait", false),
    );
    cmd.opts(
        "-device",
        OptList::new("virtserialport")
            .set("bus", "vser0.0")
            .set("chardev", "agent")
            .set("name", PORT),
    );
}

/// A connection to one guest's agent.
pub(crate) struct Agent {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
    deadline: Instant,
}

impl Agent {
    /// Connects and synchronises (`guest-sync-delimited`, which skips whatever an earlier
    /// client left in the channel); fails if the agent has not answered by `within`.
    pub(crate) async fn connect(socket: &std::path::Path, within: Duration) -> Result<Self, Error> {
        let stream = UnixStream::connect(socket)
            .await
            .map_err(|e| Error::io(format!("connecting to {}", socket.display()), e))?;
        let (read, writer) = stream.into_split();
        let mut agent = Agent {
            reader: BufReader::new(read),
            writer,
            deadline: Instant::now() + within,
        };
        // Unique per connection of this process, so an earlier client's answer never matches.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = u64::from(std::process::id()) << 32 | n;
        let mut request = vec![0xff];
        request.extend(
            json!({ "execute": "guest-sync-delimited", "arguments": { "id": id } })
                .to_string()
                .bytes(),
        );
        request.push(b'\n');
        agent.send_raw(&request).await?;
        // The answer follows a 0xff byte; anything before it is stale.
        loop {
            let mut skipped = Vec::new();
            let deadline = agent.deadline;
            let bounded = (&mut agent.reader).take(MAX_READ);
            timed(deadline, read_until(bounded, 0xff, &mut skipped)).await?;
            if skipped.last() != Some(&0xff) {
                return Err(agent_error("no sync mark from the guest agent"));
            }
            let reply = agent.read_reply().await?;
            if reply.as_u64() == Some(id) {
                return Ok(agent);
            }
        }
    }

    /// Runs `path` with `args` in the guest and returns its exit code and output.
    pub(crate) async fn exec(&mut self, path: &str, args: &[&str]) -> Result<(i64, String), Error> {
        let started = self
            .call(
                "guest-exec",
                json!({ "path": path, "arg": args, "capture-output": true }),
            )
            .await?;
        let pid = started["pid"]
            .as_i64()
            .ok_or_else(|| agent_error("guest-exec gave no pid"))?;
        loop {
            let status = self
                .call("guest-exec-status", json!({ "pid": pid }))
                .await?;
            if status["exited"].as_bool() == Some(true) {
                let code = status["exitcode"].as_i64().unwrap_or(-1);
                let out = status["out-data"]
                    .as_str()
                    .and_then(|b| {
                        use base64::Engine;
                        base64::engine::general_purpose::STANDARD.decode(b).ok()
                    })
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                return Ok((code, out));
            }
            if Instant::now() >= self.deadline {
                return Err(agent_error(&format!("{path} did not finish in time")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The guest's network interfaces as (name, MAC) pairs.
    pub(crate) async fn interfaces(&mut self) -> Result<Vec<(String, String)>, Error> {
        let reply = self.call("guest-network-get-interfaces", json!({})).await?;
        Ok(reply
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| {
                let name = i["name"].as_str()?.to_owned();
                let mac = i["hardware-address"].as_str()?.to_ascii_lowercase();
                Some((name, mac))
            })
            .collect())
    }

    async fn call(&mut self, command: &str, arguments: Value) -> Result<Value, Error> {
        let mut line = json!({ "execute": command, "arguments": arguments })
            .to_string()
            .into_bytes();
        line.push(b'\n');
        self.send_raw(&line).await?;
        self.read_reply().await
    }

    async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let deadline = self.deadline;
        tokio::time::timeout_at(deadline.into(), self.writer.write_all(bytes))
            .await
            .map_err(|_| agent_error("writing to the agent timed out"))?
            .map_err(|e| Error::io("writing to the guest agent", e))
    }

    /// The next reply's `return`, or its error.
    async fn read_reply(&mut self) -> Result<Value, Error> {
        loop {
            let mut line = String::new();
            let bounded = (&mut self.reader).take(MAX_READ);
            let n = timed(self.deadline, read_line(bounded, &mut line)).await?;
            if n == 0 {
                return Err(agent_error("the channel closed"));
            }
            let Ok(reply) = serde_json::from_str::<Value>(line.trim()) else {
                continue;
            };
            if let Some(error) = reply.get("error") {
                return Err(agent_error(error["desc"].as_str().unwrap_or("error")));
            }
            if let Some(value) = reply.get("return") {
                return Ok(value.clone());
            }
        }
    }
}

async fn read_until(
    mut from: impl tokio::io::AsyncBufRead + Unpin,
    byte: u8,
    into: &mut Vec<u8>,
) -> std::io::Result<usize> {
    from.read_until(byte, into).await
}

async fn read_line(
    mut from: impl tokio::io::AsyncBufRead + Unpin,
    into: &mut String,
) -> std::io::Result<usize> {
    from.read_line(into).await
}

async fn timed<T>(
    deadline: Instant,
    io: impl std::future::Future<Output = std::io::Result<T>>,
) -> Result<T, Error> {
    tokio::time::timeout_at(deadline.into(), io)
        .await
        .map_err(|_| agent_error("no answer from the guest agent in time"))?
        .map_err(|e| Error::io("reading from the guest agent", e))
}

fn agent_error(message: &str) -> Error {
    Error::Monitor {
        uid: "guest agent".into(),
        message: message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guest agent that speaks the protocol, with stale bytes in the channel first.
    async fn fake_agent(listener: tokio::net::UnixListener) {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        // An earlier client's unread answer, then the sync request arrives.
        write.write_all(b"{\"return\": {}}\n").await.unwrap();
        let mut first = [0u8; 1];
        read.read_exact(&mut first).await.unwrap();
        assert_eq!(first[0], 0xff, "a sync starts with 0xff");
        let mut line = String::new();
        loop {
            line.clear();
            if read.read_line(&mut line).await.unwrap() == 0 {
                return;
            }
            let request: Value = serde_json::from_str(line.trim()).unwrap();
            let reply = match request["execute"].as_str().unwrap() {
                "guest-sync-delimited" => {
                    write.write_all(&[0xff]).await.unwrap();
                    json!({ "return": request["arguments"]["id"] })
                }
                "guest-network-get-interfaces" => json!({ "return": [
                    { "name": "lo", "hardware-address": "00:00:00:00:00:00" },
                    { "name": "enp0s3", "hardware-address": "02:C0:00:00:00:01" },
                ]}),
                "guest-exec" => {
                    assert_eq!(request["arguments"]["path"], "/usr/bin/hostnamectl");
                    assert_eq!(request["arguments"]["arg"], json!(["set-hostname", "web"]));
                    json!({ "return": { "pid": 7 } })
                }
                "guest-exec-status" => json!({ "return": {
                    "exited": true, "exitcode": 0, "out-data": "ZG9uZQo="
                }}),
                other => json!({ "error": { "class": "CommandNotFound", "desc": other } }),
            };
            write
                .write_all(format!("{reply}\n").as_bytes())
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn the_client_syncs_past_stale_replies_runs_programs_and_lists_interfaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(fake_agent(listener));
        let mut agent = Agent::connect(&path, Duration::from_secs(10))
            .await
            .unwrap();
        let interfaces = agent.interfaces().await.unwrap();
        assert_eq!(interfaces[1], ("enp0s3".into(), "02:c0:00:00:00:01".into()));
        let (code, out) = agent
            .exec("/usr/bin/hostnamectl", &["set-hostname", "web"])
            .await
            .unwrap();
        assert_eq!((code, out.as_str()), (0, "done\n"));
        let err = agent.call("guest-shutdown", json!({})).await.unwrap_err();
        assert!(err.to_string().contains("guest-shutdown"), "{err}");
        drop(agent);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_silent_guest_fails_by_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let _held = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(stream);
        });
        let err = Agent::connect(&path, Duration::from_millis(200))
            .await
            .err()
            .expect("no agent answers");
        assert!(err.to_string().contains("in time"), "{err}");
    }
}
