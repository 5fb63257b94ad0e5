//! corrald's VM routes over its unix socket: the lifecycle, a missing VM everywhere, and the
//! socket's health, metrics and permissions. The VMs are declared `stopped`; where one is
//! declared running its boot files are empty, so the QEMU the controller starts exits at once
//! (booting real guests is `e2e.rs`'s job).

use std::os::unix::fs::PermissionsExt;

use corral_testkit::http::eventually;
use serde_json::json;

mod common;
use common::{api, daemon, manifest, u64_at};

#[tokio::test]
async fn vm_lifecycle_create_read_list_update_power_delete() {
    let d = daemon();
    let api = api(&d);

    let created = api
        .post("/v1/vms", &manifest(&d, "web-1", json!({"tier": "web"})))
        .await
        .expect(201);
    assert_eq!(created["kind"], "Vm");
    assert_eq!(created["metadata"]["name"], "web-1");
    assert_eq!(created["metadata"]["uid"].as_str().unwrap().len(), 36);
    assert_eq!(u64_at(&created, "/metadata/generation"), 1);
    assert_eq!(created["metadata"]["deleting"], false);
    assert!(created["metadata"]["created_at"].is_string(), "{created}");
    assert_eq!(created["spec"]["memory"], "64M");
    assert_eq!(created["spec"]["cpus"], 1);
    assert_eq!(created["spec"]["power"], "stopped");
    assert!(created["status"]["phase"].is_string(), "{created}");
    api.post("/v1/vms", &manifest(&d, "db-1", json!({"tier": "db"})))
        .await
        .expect(201);
    let taken = api
        .post("/v1/vms", &manifest(&d, "web-1", json!({})))
        .await
        .expect_error(409, "AlreadyExists");
    assert!(taken.contains("web-1"), "{taken}");

    let read = api.get("/v1/vms/web-1").await.expect(200);
    assert_eq!(read["metadata"]["uid"], created["metadata"]["uid"]);
    assert_eq!(read["spec"], created["spec"]);

    assert_eq!(api.names("").await, ["db-1", "web-1"]);
    assert_eq!(api.names("tier%3Dweb").await, ["web-1"]);
    assert_eq!(api.names("tier!%3Dweb").await, ["db-1"]);
    assert_eq!(api.names("tier").await, ["db-1", "web-1"]);
    assert!(api.names("!tier").await.is_empty());
    assert!(api.names("tier%3Dweb,tier%3Ddb").await.is_empty());
    let list = api.get("/v1/vms").await.expect(200);
    assert!(list["revision"].as_u64().unwrap() > 0, "{list}");

    // Labels are not spec: the generation stays.
    let mut labelled = read.clone();
    labelled["metadata"]["labels"]["env"] = json!("prod");
    let labelled = api.put("/v1/vms/web-1", &labelled).await.expect(200);
    assert_eq!(labelled["metadata"]["labels"]["env"], "prod");
    assert_eq!(u64_at(&labelled, "/metadata/generation"), 1);
    assert!(
        u64_at(&labelled, "/metadata/resource_version")
            > u64_at(&read, "/metadata/resource_version")
    );
    assert_eq!(api.names("env%3Dprod").await, ["web-1"]);

    // A spec change bumps it.
    let mut bigger = labelled.clone();
    bigger["spec"]["cpus"] = json!(2);
    bigger["spec"]["memory"] = json!(128 << 20);
    let bigger = api.put("/v1/vms/web-1", &bigger).await.expect(200);
    assert_eq!(bigger["spec"]["cpus"], 2);
    assert_eq!(bigger["spec"]["memory"], "128M");
    assert_eq!(u64_at(&bigger, "/metadata/generation"), 2);

    // A write from an older read loses.
    let mut stale = labelled.clone();
    stale["spec"]["cpus"] = json!(3);
    let message = api
        .put("/v1/vms/web-1", &stale)
        .await
        .expect_error(409, "Conflict");
    assert!(message.contains("resource_version"), "{message}");
    assert_eq!(
        api.get("/v1/vms/web-1").await.expect(200)["spec"]["cpus"],
        2
    );
    // Version 0 writes whatever is stored.
    let mut unconditional = labelled.clone();
    unconditional["metadata"]["resource_version"] = json!(0);
    unconditional["spec"]["cpus"] = json!(4);
    let unconditional = api.put("/v1/vms/web-1", &unconditional).await.expect(200);
    assert_eq!(unconditional["spec"]["cpus"], 4);
    assert_eq!(u64_at(&unconditional, "/metadata/generation"), 3);

    // Power is spec: every action is a new generation. The VM ends stopped, and no guest can
    // run meanwhile: its boot files are empty, so a QEMU the controller starts exits at once.
    let started = api.action("web-1", "start").await.expect(200);
    assert_eq!(started["spec"]["power"], "running");
    assert_eq!(u64_at(&started, "/metadata/generation"), 4);
    let stopped = api.action("web-1", "stop?force=true").await.expect(200);
    assert_eq!(stopped["spec"]["power"], "stopped");
    assert_eq!(
        stopped["metadata"]["annotations"]["corral.dev/stop-mode"],
        "force"
    );
    assert_eq!(u64_at(&stopped, "/metadata/generation"), 5);
    let paused = api.action("web-1", "pause").await.expect(200);
    assert_eq!(paused["spec"]["power"], "paused");
    assert!(
        paused["metadata"]["annotations"]
            .get("corral.dev/stop-mode")
            .is_none(),
        "{paused}"
    );
    assert_eq!(u64_at(&paused, "/metadata/generation"), 6);
    let resumed = api.action("web-1", "resume").await.expect(200);
    assert_eq!(resumed["spec"]["power"], "running");
    assert_eq!(u64_at(&resumed, "/metadata/generation"), 7);
    let restarted = api.action("web-1", "restart").await.expect(200);
    assert_eq!(restarted["spec"]["power"], "running");
    assert!(
        restarted["metadata"]["annotations"]["corral.dev/restart-requested-at"].is_string(),
        "{restarted}"
    );
    assert_eq!(u64_at(&restarted, "/metadata/generation"), 8);
    let stopped = api.action("web-1", "stop").await.expect(200);
    assert_eq!(stopped["spec"]["power"], "stopped");
    assert!(
        stopped["metadata"]["annotations"]
            .get("corral.dev/stop-mode")
            .is_none(),
        "{stopped}"
    );
    assert_eq!(u64_at(&stopped, "/metadata/generation"), 9);
    let bad_query = api.action("web-1", "stop?force=maybe").await;
    assert_eq!(bad_query.status, 400, "{}", bad_query.text());

    // The console log of a VM: raw bytes, empty or not.
    let log = api.get("/v1/vms/web-1/console/log?tail=64").await;
    assert_eq!(log.status, 200, "{}", log.text());
    assert_eq!(log.header("content-type"), Some("application/octet-stream"));
    assert!(log.body.len() <= 64);

    // Deletion: a stale version is refused, then 202 and the VM goes.
    let current = api.get("/v1/vms/web-1").await.expect(200);
    let stale_version = u64_at(&current, "/metadata/resource_version") - 1;
    api.delete(&format!("/v1/vms/web-1?resourceVersion={stale_version}"))
        .await
        .expect_error(409, "Conflict");
    // The current version is accepted; the controller may write status between our read and
    // the delete, so a conflict means "read again", a bounded number of times.
    let mut current = current;
    let mut attempts = 0;
    let deleting = loop {
        let reply = api
            .delete(&format!(
                "/v1/vms/web-1?resourceVersion={}",
                u64_at(&current, "/metadata/resource_version")
            ))
            .await;
        attempts += 1;
        if reply.status == 409 && attempts < 5 {
            current = api.get("/v1/vms/web-1").await.expect(200);
            continue;
        }
        break reply.expect(202);
    };
    assert_eq!(deleting["metadata"]["deleting"], true);
    eventually("web-1 to be deleted", || async {
        let reply = api.get("/v1/vms/web-1").await;
        match reply.status {
            404 => Some(reply.expect_error(404, "NotFound")),
            200 => {
                // While it lasts, it is marked and refuses new intents.
                assert_eq!(reply.json()["metadata"]["deleting"], true);
                None
            }
            other => panic!("unexpected {other}: {}", reply.text()),
        }
    })
    .await;
    assert_eq!(api.names("").await, ["db-1"]);
    api.delete("/v1/vms/db-1").await.expect(202);
    eventually("db-1 to be deleted", || async {
        (api.get("/v1/vms/db-1").await.status == 404).then_some(())
    })
    .await;
    assert!(api.names("").await.is_empty());
    assert!(
        d.qemu_pids().is_empty(),
        "no QEMU left: {:?}",
        d.qemu_pids()
    );
}

#[tokio::test]
async fn a_missing_vm_is_not_found_everywhere() {
    let d = daemon();
    let api = api(&d);
    let message = api.get("/v1/vms/nope").await.expect_error(404, "NotFound");
    assert!(message.contains("\"nope\" not found"), "{message}");
    for action in [
        "start",
        "stop",
        "stop?force=true",
        "pause",
        "resume",
        "restart",
    ] {
        api.action("nope", action)
            .await
            .expect_error(404, "NotFound");
    }
    api.get("/v1/vms/nope/console/log")
        .await
        .expect_error(404, "NotFound");
    api.delete("/v1/vms/nope")
        .await
        .expect_error(404, "NotFound");
    let mut body = manifest(&d, "nope", json!({}));
    body["spec"]["cpus"] = json!(2);
    api.put("/v1/vms/nope", &body)
        .await
        .expect_error(404, "NotFound");
    assert!(api.names("").await.is_empty());
}

#[tokio::test]
async fn metrics_health_and_a_private_socket() {
    let d = daemon();
    let api = api(&d);
    let health = api.get("/healthz").await;
    assert_eq!((health.status, health.text().as_str()), (200, "ok\n"));
    api.post("/v1/vms", &manifest(&d, "m-1", json!({})))
        .await
        .expect(201);
    let metrics = api.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/openmetrics-text")),
        "{metrics:?}"
    );
    let text = metrics.text();
    assert!(text.contains("corral_vms"), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("corral_vms{phase=")),
        "one VM is counted by phase: {text}"
    );

    let mode = std::fs::metadata(d.socket()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    let dir = d.socket().parent().unwrap().to_owned();
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
    // QEMU's unprivileged group (corral-qemu, when corrald is root) may pass through to its
    // pid file; it may not list or write, and others may do nothing.
    assert_eq!(mode & 0o067, 0, "{} mode {mode:o}", dir.display());
}
