//! The client against a scripted fake QMP peer: misbehaving peers, timeouts and closing.

mod support;

use std::time::Duration;

use corral_qmp::{CloseReason, Error, EventKind, Qmp, QmpConfig, RunState};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use support::*;

#[tokio::test]
async fn garbage_lines_are_skipped() {
    let Fixture {
        qmp,
        mut peer,
        _dir,
    } = connect(QmpConfig::default()).await;
    let mut events = qmp.subscribe();
    let script = async {
        let id = peer.expect("query-status").await;
        let junk: [&[u8]; 16] = [
            b"\x00\x01\x02\x03binary junk\x7f\n",
            b"[1,2]\n",
            b"{\"foo\":1}\n",
            b"\xff\xfe\xfd\n",
            b"{\"return\": \"\xff\xfe\", \"id\": 1}\n",
            b"\n",
            b"\r\n",
            b"   \n",
            b"42\n",
            b"\"string\"\n",
            b"{\"return\": {}}\n",
            b"{\"return\": {}, \"id\": \"not-ours\"}\n",
            b"{\"return\": {}, \"id\": -5}\n",
            b"{\"return\": {}, \"id\": 987654321}\n",
            b"{\"event\": 5}\n",
            b"{\"QMP\": {}}\n{\"execute\": \"backwards\"}\n{\"return\": {}, \"id\": {\"nested\": true}}\n",
        ];
        for line in junk {
            peer.send_raw(line).await;
        }
        let reply = json!({ "status": "running", "running": true });
        peer.reply(&id, reply).await;
        peer.send(json!({ "event": "STOP" })).await;
        let id = peer.expect("again").await;
        peer.reply(&id, json!("still here")).await;
    };
    let client = async {
        let status = qmp.query_status().await.expect("reply after garbage");
        assert_eq!(status.status, RunState::Running);
        assert_eq!(
            qmp.execute("again", None).await.expect("again"),
            "still here"
        );
    };
    within(async { tokio::join!(script, client) }).await;
    assert_eq!(
        within(events.recv()).await.expect("event").kind,
        EventKind::Stop
    );
    assert!(!qmp.is_closed());
}

#[tokio::test]
async fn oversized_line_closes_the_connection() {
    let Fixture {
        qmp,
        mut peer,
        _dir,
    } = connect(QmpConfig::default()).await;
    let limit = QmpConfig::default().max_line_bytes;
    let mut events = qmp.subscribe();
    let waiter = {
        let qmp = qmp.clone();
        tokio::spawn(async move { qmp.execute("query-status", None).await })
    };
    let id = peer.expect("query-status").await;
    let flood = tokio::spawn(async move {
        // A reply that would be valid JSON if it were ever read to the end.
        let mut line = format!(r#"{{"id": {id}, "return": ""#).into_bytes();
        line.resize(10 * 1024 * 1024, b'a');
        line.extend_from_slice(b"\"}\n");
        // The client stops reading and closes; the write may fail.
        let _ = peer.writer.write_all(&line).await;
        peer
    });
    let err = within(waiter)
        .await
        .expect("join")
        .expect_err("overlong reply");
    assert!(
        matches!(err, Error::LineTooLong { limit: l } if l == limit),
        "{err:?}"
    );
    assert!(
        matches!(within(qmp.closed()).await, CloseReason::LineTooLong { limit: l } if l == limit)
    );
    assert!(qmp.is_closed());
    let err = qmp.execute("query-status", None).await.expect_err("closed");
    assert!(matches!(err, Error::Closed), "{err:?}");
    assert!(matches!(
        within(events.recv()).await,
        Err(RecvError::Closed)
    ));
    drop(within(flood).await.expect("join"));
}

#[tokio::test]
async fn socket_closed_mid_reply() {
    let Fixture {
        qmp,
        mut peer,
        _dir,
    } = connect(QmpConfig::default()).await;
    let mut events = qmp.subscribe();
    let waiter = {
        let qmp = qmp.clone();
        tokio::spawn(async move { qmp.query_status().await })
    };
    let id = peer.expect("query-status").await;
    peer.send_raw(format!(r#"{{"id": {id}, "return": {{"status": "runn"#).as_bytes())
        .await;
    drop(peer);

    let err = within(waiter)
        .await
        .expect("join")
        .expect_err("closed mid-reply");
    assert!(matches!(err, Error::Closed), "{err:?}");
    assert!(matches!(within(qmp.closed()).await, CloseReason::Eof));
    // Callable again, from a clone too.
    assert!(matches!(
        within(qmp.clone().closed()).await,
        CloseReason::Eof
    ));
    assert!(qmp.is_closed());
    let err = within(qmp.execute("cont", None))
        .await
        .expect_err("fails fast");
    assert!(matches!(err, Error::Closed), "{err:?}");
    assert!(matches!(
        within(events.recv()).await,
        Err(RecvError::Closed)
    ));
    assert!(matches!(
        qmp.subscribe().try_recv(),
        Err(TryRecvError::Closed)
    ));
    let err = qmp.quit().await.expect_err("quit on a closed connection");
    assert!(matches!(err, Error::Closed), "{err:?}");
}

#[tokio::test]
async fn silent_peer_times_out_the_greeting() {
    let (_dir, path, listener) = socket();
    let accept = tokio::spawn(async move { listener.accept().await.expect("accept").0 });
    let err = within(Qmp::connect_with(&path, short_timeouts()))
        .await
        .expect_err("no greeting");
    assert!(
        matches!(&err, Error::Protocol { reason } if reason.contains("no QMP greeting")),
        "{err:?}"
    );
    drop(accept.await);
}

#[tokio::test]
async fn bad_greetings_are_protocol_errors() {
    let cases: [&[u8]; 5] = [
        b"",
        b"{\"foo\": 1}\n",
        b"not json\n",
        b"{\"QMP\": {\"version\": {\"qemu\": {\"major\": 7}}, \"capabilities\": []}}\n",
        b"{\"return\": {}}\n",
    ];
    for greeting in cases {
        let (_dir, path, listener) = socket();
        let peer = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            stream.write_all(greeting).await.expect("write");
            stream
        });
        let err = within(Qmp::connect_with(&path, short_timeouts()))
            .await
            .expect_err("bad greeting");
        assert!(
            matches!(err, Error::Protocol { .. }),
            "{greeting:?}: {err:?}"
        );
        drop(peer.await);
    }
}

#[tokio::test]
async fn failed_capabilities_negotiation() {
    let (_dir, path, listener) = socket();
    let peer = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let mut peer = Peer::new(stream);
        peer.send_raw(format!("{GREETING}\n").as_bytes()).await;
        let id = peer.expect("qmp_capabilities").await;
        peer.send(json!({ "id": id, "error": { "class": "GenericError", "desc": "no" } }))
            .await;
        peer
    });
    let err = within(Qmp::connect(&path))
        .await
        .expect_err("negotiation fails");
    assert!(
        matches!(&err, Error::Protocol { reason } if reason.contains("capabilities")),
        "{err:?}"
    );
    drop(peer.await);
}

#[tokio::test]
async fn connect_to_missing_socket_names_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("absent.sock");
    let err = Qmp::connect(&path).await.expect_err("no socket");
    assert!(
        matches!(&err, Error::Io { path: Some(p), .. } if *p == path),
        "{err:?}"
    );
    assert!(err.to_string().contains("absent.sock"), "{err}");
    assert!(std::error::Error::source(&err).is_some());
}

#[tokio::test]
async fn from_stream_works_on_a_socket_pair() {
    let (client, server) = UnixStream::pair().expect("pair");
    let script = async {
        let mut peer = Peer::new(server);
        peer.send_raw(format!("{GREETING}\n").as_bytes()).await;
        let id = peer.expect("qmp_capabilities").await;
        peer.reply(&id, json!({})).await;
        peer
    };
    let (qmp, _peer) =
        within(async { tokio::join!(Qmp::from_stream(client, QmpConfig::default()), script) })
            .await;
    assert_eq!(qmp.expect("from_stream").greeting().capabilities, ["oob"]);
}

#[tokio::test]
async fn unanswered_command_times_out_and_late_reply_is_dropped() {
    let Fixture {
        qmp,
        mut peer,
        _dir,
    } = connect(short_timeouts()).await;
    let waiter = {
        let qmp = qmp.clone();
        tokio::spawn(async move { qmp.query_status().await })
    };
    let late_id = peer.expect("query-status").await;
    let err = within(waiter).await.expect("join").expect_err("timeout");
    match &err {
        Error::Timeout { command, after } => {
            assert_eq!(command, "query-status");
            assert_eq!(*after, Duration::from_millis(200));
        }
        other => panic!("expected Error::Timeout, got {other:?}"),
    }

    // A caller that gives up by dropping its future also leaves no waiter behind.
    let cancelled = {
        let qmp = qmp.clone();
        tokio::spawn(async move { qmp.execute("cancelled", None).await })
    };
    let cancelled_id = peer.expect("cancelled").await;
    cancelled.abort();
    assert!(cancelled.await.is_err());

    let script = async {
        peer.reply(&late_id, json!({ "status": "paused", "running": false }))
            .await;
        peer.reply(&cancelled_id, json!("too late")).await;
        let id = peer.expect("next").await;
        peer.reply(&id, json!("fresh")).await;
        let id = peer.expect("slow").await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        peer.reply(&id, json!("slow but in time")).await;
    };
    let client = async {
        assert_eq!(qmp.execute("next", None).await.expect("next"), "fresh");
        let value = qmp
            .execute_with_timeout("slow", None, Duration::from_secs(5))
            .await
            .expect("longer timeout");
        assert_eq!(value, "slow but in time");
    };
    within(async { tokio::join!(script, client) }).await;
    assert!(!qmp.is_closed());
}

#[tokio::test]
async fn quit_succeeds_when_the_peer_closes_without_replying() {
    let Fixture {
        qmp,
        mut peer,
        _dir,
    } = connect(QmpConfig::default()).await;
    let script = async {
        peer.expect("quit").await;
        peer.send(
            json!({ "event": "SHUTDOWN", "data": { "guest": false, "reason": "host-qmp-quit" } }),
        )
        .await;
        drop(peer);
    };
    let (result, ()) = within(async { tokio::join!(qmp.quit(), script) }).await;
    result.expect("quit");
    assert!(matches!(within(qmp.closed()).await, CloseReason::Eof));
}

#[tokio::test]
async fn dropping_the_client_closes_the_socket() {
    let Fixture {
        qmp,
        mut peer,
        _dir,
    } = connect(QmpConfig::default()).await;
    let clone = qmp.clone();
    drop(qmp);
    let ping = clone.execute("ping", None);
    let script = async {
        let id = peer.expect("ping").await;
        peer.reply(&id, json!({})).await;
    };
    let (pong, ()) = within(async { tokio::join!(ping, script) }).await;
    assert_eq!(pong.expect("the clone still works"), json!({}));
    drop(clone);
    assert!(peer.try_recv().await.is_none(), "client closed its end");
}
