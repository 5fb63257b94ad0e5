//! corrald's REST API refuses invalid input naming the field, and creates nothing.

use serde_json::{Value, json};

mod common;
use common::{api, daemon, manifest, set};

#[tokio::test]
async fn invalid_input_is_refused_naming_the_field_and_creates_nothing() {
    let d = daemon();
    let api = api(&d);
    api.post("/v1/vms", &manifest(&d, "keep", json!({})))
        .await
        .expect(201);
    let before = api.names("").await;

    let good = manifest(&d, "new-1", json!({}));
    let with = |pointer: &str, value: Value| set(&good, pointer, value);
    let mut unknown = good.clone();
    unknown["spec"]["cpu"] = json!(2);
    let mut unknown_top = good.clone();
    unknown_top["extra"] = json!(1);
    let cases: Vec<(Value, &str)> = vec![
        (
            with("/metadata/name", json!("Bad_Name")),
            "metadata.name: \"Bad_Name\" is not a valid name",
        ),
        (unknown, "unknown field `cpu`, expected one of `cpus`"),
        (unknown_top, "unknown field `extra`"),
        (
            with("/spec/memory", json!("lots")),
            "spec.memory: \"lots\" is not a size",
        ),
        (
            with("/spec/memory", json!("1GB")),
            "spec.memory: \"1GB\" uses the decimal unit GB",
        ),
        (
            with("/spec/cpus", json!(0)),
            "spec.cpus: must be between 1 and 256 (got 0)",
        ),
        (
            with("/spec/power", json!("off")),
            "spec.power: \"off\" is not a valid power state",
        ),
        (
            with("/spec/machine", json!("virt")),
            "spec.machine: virt is not available on x86_64",
        ),
        (
            with("/spec/boot", json!({"kernel": {"kernel": "vmlinuz"}})),
            "spec.boot.kernel.kernel: must be an absolute path",
        ),
        (
            with(
                "/spec/boot",
                json!({"kernel": {"kernel": "/nonexistent/vmlinuz"}}),
            ),
            "spec.boot.kernel.kernel: /nonexistent/vmlinuz",
        ),
        (
            with("/kind", json!("Volumes")),
            "unknown variant `Volumes`, expected one of `Vm`",
        ),
        (
            with("/metadata/labels", json!({"tier": "web tier"})),
            "metadata.labels: value \"web tier\"",
        ),
    ];
    for (body, needle) in &cases {
        let message = api
            .post("/v1/vms", body)
            .await
            .expect_error(400, "InvalidArgument");
        assert!(message.contains(needle), "{needle:?} not in {message:?}");
    }
    for raw in [&b"{not json"[..], b"", b"[]"] {
        let reply = api.send("POST", "/v1/vms", Some(raw)).await;
        reply.expect_error(400, "InvalidArgument");
    }
    assert_eq!(api.names("").await, before, "nothing was created");

    // Updates are checked the same way, and the path names the VM.
    let kept = api.get("/v1/vms/keep").await.expect(200);
    let mut zero = kept.clone();
    zero["spec"]["cpus"] = json!(0);
    let message = api
        .put("/v1/vms/keep", &zero)
        .await
        .expect_error(400, "InvalidArgument");
    assert!(message.starts_with("spec.cpus:"), "{message}");
    let message = api
        .put("/v1/vms/other", &kept)
        .await
        .expect_error(400, "InvalidArgument");
    assert!(message.starts_with("metadata.name:"), "{message}");
    let after = api.get("/v1/vms/keep").await.expect(200);
    assert_eq!(after["metadata"], kept["metadata"], "nothing was changed");

    // Query strings.
    let message = api
        .get("/v1/vms?labelSelector=%3Dweb")
        .await
        .expect_error(400, "InvalidArgument");
    assert!(message.contains("label"), "{message}");
    // The framework's own rejections come in the API's JSON error shape too.
    let message = api
        .get("/v1/vms?selector=tier")
        .await
        .expect_error(400, "InvalidArgument");
    assert!(
        message.contains("selector"),
        "names the parameter: {message}"
    );
    api.delete("/v1/vms/keep?resourceVersion=latest")
        .await
        .expect_error(400, "InvalidArgument");
    api.get("/v1/vms/keep/console/log?tail=-1")
        .await
        .expect_error(400, "InvalidArgument");
    // `all_projects` is every list's, also of objects in no project (a script passes it
    // to each list it makes).
    api.get("/v1/nodes?all_projects=true").await.expect(200);
    let reply = api.send("PATCH", "/v1/vms", None).await;
    reply.expect_error(405, "MethodNotAllowed");
    assert!(reply.header("allow").is_some(), "{reply:?}");
    assert_eq!(api.names("").await, before);
}
