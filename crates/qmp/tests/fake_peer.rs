//! The client against a scripted fake QMP peer: handshake, commands, replies and events.

mod support;

use corral_qmp::{CloseReason, Error, EventKind, Qmp, QmpConfig, RunState, Timestamp};
use serde_json::{Value, json};

use support::*;

#[test]
fn qmp_is_send_sync_clone_debug() {
    fn client<T: Send + Sync + Clone + std::fmt::Debug + 'static>() {}
    fn error<T: std::error::Error + Send + Sync + 'static>() {}
    client::<Qmp>();
    error::<Error>();
    error::<CloseReason>();
}

#[tokio::test]
async fn handshake_and_commands() {
    let Fixture {
        qmp,
        mut peer,
        _dir,
    } = connect(QmpConfig::default()).await;
    let version = &qmp.greeting().version;
    assert_eq!((version.major, version.minor, version.micro), (7, 2, 22));
    assert_eq!(version.package, "Debian 1:7.2");
    assert_eq!(version.to_string(), "7.2.22 (Debian 1:7.2)");
    assert_eq!(qmp.greeting().capabilities, ["oob"]);
    assert!(!qmp.is_closed());
    assert!(format!("{qmp:?}").contains("Qmp"));

    let script = async {
        let request = peer.recv().await;
        assert_eq!(request["execute"], "query-status");
        assert!(request.get("arguments").is_none());
        let reply = json!({ "status": "prelaunch", "singlestep": false, "running": false });
        peer.reply(&request["id"], reply).await;

        let request = peer.recv().await;
        assert_eq!(request["execute"], "qom-get");
        assert_eq!(
            request["arguments"],
            json!({ "path": "/machine", "property": "type" })
        );
        peer.reply(&request["id"], json!("pc-q35-7.2-machine"))
            .await;

        let request = peer.recv().await;
        assert_eq!(
            request["arguments"],
            json!({ "command-line": "info version" })
        );
        peer.reply(&request["id"], json!("7.2.22\r\n")).await;

        // Verbatim from QEMU 7.2.
        let id = peer.expect("query-memdev").await;
        peer.send_raw(format!(r#"{{"return": [{{"share": false, "reserve": true, "prealloc": false, "host-nodes": [], "size": 134217728, "merge": true, "dump": true, "policy": "default", "id": "pc.ram"}}], "id": {id}}}"#).as_bytes()).await;
        peer.send_raw(b"\n").await;

        let request = peer.recv().await;
        assert_eq!(request["arguments"], json!({ "path": "/objects" }));
        let reply = json!([{ "name": "type", "type": "string" }, { "name": "mem0", "type": "child<memory-backend-ram>" }]);
        peer.reply(&request["id"], reply).await;

        for command in ["stop", "cont", "system_powerdown", "system_reset"] {
            let id = peer.expect(command).await;
            peer.reply(&id, json!({})).await;
        }

        let id = peer.expect("query-status").await;
        peer.reply(&id, json!({ "status": "warp-speed", "running": true }))
            .await;

        let id = peer.expect("query-status").await;
        peer.reply(&id, json!({ "status": 7 })).await;

        let id = peer.expect("quit").await;
        peer.reply(&id, json!({})).await;
    };
    let client = async {
        let status = qmp.query_status().await.expect("query-status");
        assert!(!status.running);
        assert_eq!(status.status, RunState::Prelaunch);
        assert_eq!(status.status.as_str(), "prelaunch");

        let machine = qmp.qom_get("/machine", "type").await.expect("qom-get");
        assert_eq!(machine, "pc-q35-7.2-machine");

        let text = qmp
            .human_monitor_command("info version")
            .await
            .expect("hmp");
        assert_eq!(text, "7.2.22\r\n");

        let memdevs = qmp.query_memdev().await.expect("query-memdev");
        assert_eq!(memdevs.len(), 1);
        let ram = &memdevs[0];
        assert_eq!(ram.id.as_deref(), Some("pc.ram"));
        assert_eq!(ram.size, 128 << 20);
        assert!(ram.merge && ram.dump && !ram.prealloc);
        assert_eq!((ram.share, ram.reserve), (Some(false), Some(true)));
        assert!(ram.host_nodes.is_empty());
        assert_eq!(ram.policy, "default");

        let props = qmp.qom_list("/objects").await.expect("qom-list");
        assert_eq!(props[1].name, "mem0");
        assert_eq!(props[1].type_, "child<memory-backend-ram>");

        qmp.stop().await.expect("stop");
        qmp.cont().await.expect("cont");
        qmp.system_powerdown().await.expect("system_powerdown");
        qmp.system_reset().await.expect("system_reset");

        let status = qmp.query_status().await.expect("unknown state");
        assert_eq!(status.status, RunState::Other("warp-speed".into()));

        let err = qmp.query_status().await.expect_err("malformed reply");
        assert!(
            matches!(err, Error::Protocol { ref reason } if reason.contains("query-status")),
            "{err}"
        );

        qmp.quit().await.expect("quit");
    };
    within(async { tokio::join!(script, client) }).await;
}

#[tokio::test]
async fn replies_out_of_order_reach_their_callers() {
    let Fixture {
        qmp,
        mut peer,
        _dir,
    } = connect(QmpConfig::default()).await;
    let call = |name: &'static str| {
        let qmp = qmp.clone();
        tokio::spawn(async move { qmp.execute(name, Some(json!({ "who": name }))).await })
    };
    let (one, two, three) = (call("one"), call("two"), call("three"));

    let mut ids = std::collections::HashMap::new();
    for _ in 0..3 {
        let request = peer.recv().await;
        let name = request["execute"].as_str().expect("name").to_owned();
        assert_eq!(request["arguments"]["who"], name.as_str());
        ids.insert(name, request["id"].clone());
    }
    for name in ["three", "one", "two"] {
        peer.reply(&ids[name], json!({ "answer": name })).await;
    }
    for (name, task) in [("one", one), ("two", two), ("three", three)] {
        let value = within(task).await.expect("join").expect("reply");
        assert_eq!(value, json!({ "answer": name }));
    }
}

#[tokio::test]
async fn error_reply_is_a_qmp_error() {
    let Fixture {
        qmp,
        mut peer,
        _dir,
    } = connect(QmpConfig::default()).await;
    let script = async {
        let id = peer.expect("nope").await;
        peer.send(json!({ "id": id, "error": { "class": "CommandNotFound", "desc": "The command nope has not been found" } })).await;
        let id = peer.expect("odd").await;
        peer.send(json!({ "id": id, "error": "not an object" }))
            .await;
    };
    let client = async {
        let err = qmp.execute("nope", None).await.expect_err("error reply");
        match &err {
            Error::Qmp {
                command,
                class,
                desc,
            } => {
                assert_eq!(command, "nope");
                assert_eq!(class, "CommandNotFound");
                assert_eq!(desc, "The command nope has not been found");
            }
            other => panic!("expected Error::Qmp, got {other:?}"),
        }
        assert!(err.to_string().contains("CommandNotFound"));
        let err = qmp
            .execute("odd", None)
            .await
            .expect_err("malformed error reply");
        assert!(matches!(err, Error::Protocol { .. }), "{err:?}");
    };
    within(async { tokio::join!(script, client) }).await;
    assert!(!qmp.is_closed());
}

#[tokio::test]
async fn events_interleaved_with_replies_arrive_in_order() {
    let Fixture {
        qmp,
        mut peer,
        _dir,
    } = connect(QmpConfig::default()).await;
    let mut events = qmp.subscribe();
    let mut second = qmp.subscribe();
    let ts = json!({ "seconds": 1700000000, "microseconds": 42 });
    let script = async {
        let id = peer.expect("first").await;
        peer.send(json!({ "event": "STOP", "timestamp": ts })).await;
        peer.send(json!({ "event": "RESUME", "timestamp": ts }))
            .await;
        peer.reply(&id, json!(1)).await;
        peer.send(json!({ "event": "SHUTDOWN", "data": { "guest": true, "reason": "guest-shutdown" }, "timestamp": ts })).await;
        let id = peer.expect("second").await;
        peer.send(json!({ "event": "RESET", "data": { "guest": false, "reason": "host-qmp-system-reset" }, "timestamp": ts })).await;
        peer.send(json!({ "event": "GUEST_PANICKED", "data": { "action": "pause", "info": { "type": "hyper-v" } }, "timestamp": ts })).await;
        peer.reply(&id, json!(2)).await;
        peer.send(json!({ "event": "POWERDOWN", "timestamp": ts }))
            .await;
        peer.send(
            json!({ "event": "BLOCK_JOB_READY", "data": { "device": "d0" }, "timestamp": ts }),
        )
        .await;
        // A known event with data that does not match its schema, and no timestamp.
        peer.send(json!({ "event": "SHUTDOWN", "data": { "guest": "yes" } }))
            .await;
        peer.send(json!({ "event": "STOP", "timestamp": "noon" }))
            .await;
    };
    let client = async {
        assert_eq!(qmp.execute("first", None).await.expect("first"), 1);
        assert_eq!(qmp.execute("second", None).await.expect("second"), 2);
    };
    within(async { tokio::join!(script, client) }).await;

    let expected = [
        EventKind::Stop,
        EventKind::Resume,
        EventKind::Shutdown {
            guest: true,
            reason: "guest-shutdown".into(),
        },
        EventKind::Reset {
            guest: false,
            reason: "host-qmp-system-reset".into(),
        },
        EventKind::GuestPanicked {
            action: "pause".into(),
        },
        EventKind::Powerdown,
        EventKind::Other("BLOCK_JOB_READY".into()),
        EventKind::Other("SHUTDOWN".into()),
        EventKind::Stop,
    ];
    let stamp = Some(Timestamp {
        seconds: 1_700_000_000,
        microseconds: 42,
    });
    for (i, kind) in expected.iter().enumerate() {
        let event = within(events.recv()).await.expect("event");
        assert_eq!(&event.kind, kind, "event {i}");
        let copy = within(second.recv())
            .await
            .expect("event for the second subscriber");
        assert_eq!(copy, event);
        assert_eq!(
            event.timestamp,
            if i < 7 { stamp } else { None },
            "event {i}"
        );
    }
    let names: Vec<&str> = expected.iter().map(EventKind::name).collect();
    assert_eq!(
        names[..7],
        [
            "STOP",
            "RESUME",
            "SHUTDOWN",
            "RESET",
            "GUEST_PANICKED",
            "POWERDOWN",
            "BLOCK_JOB_READY"
        ]
    );

    // Data is kept raw as well, including members the parsed kind drops.
    peer.send(json!({ "event": "GUEST_PANICKED", "data": { "action": "poweroff", "info": { "type": "s390" } } })).await;
    let event = within(events.recv()).await.expect("event");
    assert_eq!(event.data["info"]["type"], "s390");
    peer.send(json!({ "event": "RESUME" })).await;
    assert_eq!(
        within(events.recv()).await.expect("event").data,
        Value::Null
    );
}
