//! corrald's storage routes: images, volumes and snapshots, answering in the documented
//! schema.

use corral_testkit::http::eventually;
use serde_json::json;

mod common;
use common::{api, daemon};

#[tokio::test]
async fn storage_routes_import_images_make_volumes_and_answer_in_the_documented_schema() {
    let d = daemon();
    let api = api(&d);
    let kernel = corral_testkit::GuestKit::get(corral_contract::Arch::X86_64)
        .expect("guest kit")
        .kernel();
    let image = json!({
        "kind": "Image",
        "metadata": {"name": "k"},
        "spec": {"source": {"path": kernel}, "format": "kernel"},
    });
    let created = api.post("/v1/images", &image).await.expect(201);
    let digest = created["status"]["digest"].as_str().unwrap().to_owned();
    assert!(digest.starts_with("blake3:"), "{created}");
    assert_eq!(
        api.get("/v1/images").await.expect(200)["items"][0]["status"]["digest"],
        digest.as_str()
    );
    api.post("/v1/images", &image)
        .await
        .expect_error(409, "AlreadyExists");
    let verified = api
        .post("/v1/images/k/verify", &json!({}))
        .await
        .expect(200);
    assert_eq!(verified["ok"], true);

    let volume = json!({"kind": "Volume", "metadata": {"name": "v"}, "spec": {"size": "16M"}});
    api.post("/v1/volumes", &volume).await.expect(201);
    let ready = eventually("the volume", || async {
        let v = api.get("/v1/volumes/v").await.expect(200);
        (v["status"]["phase"] == "Ready").then_some(v)
    })
    .await;
    assert_eq!(ready["status"]["size"], 16 << 20);
    let mut bigger = ready.clone();
    bigger["spec"]["size"] = json!("32M");
    api.put("/v1/volumes/v", &bigger).await.expect(200);
    eventually("the resize", || async {
        let v = api.get("/v1/volumes/v").await.expect(200);
        (v["status"]["size"] == 32 << 20).then_some(())
    })
    .await;
    let mut smaller = ready.clone();
    smaller["metadata"]["resource_version"] = json!(0);
    let message = api
        .put("/v1/volumes/v", &smaller)
        .await
        .expect_error(400, "InvalidArgument");
    assert!(
        message.starts_with("spec.size: volumes only grow"),
        "{message}"
    );
    let bad = json!({"kind": "Volume", "metadata": {"name": "w"}, "spec": {}});
    let message = api
        .post("/v1/volumes", &bad)
        .await
        .expect_error(400, "InvalidArgument");
    assert!(
        message.contains("spec.size: required for an empty volume"),
        "{message}"
    );

    // A snapshot of a VM that is not there yet waits for it, saying so.
    let snap = json!({"kind": "Snapshot", "metadata": {"name": "s"}, "spec": {"vm": "absent"}});
    api.post("/v1/snapshots", &snap).await.expect(201);
    let waiting = loop {
        let s = api.get("/v1/snapshots/s").await.expect(200);
        if s["status"]["message"].is_string() {
            break s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(waiting["status"]["phase"], "Pending", "{waiting}");
    assert_eq!(
        waiting["status"]["message"], "Waiting: vm/absent is missing",
        "{waiting}"
    );
    assert_eq!(
        api.get("/v1/snapshots?vm=absent").await.expect(200)["items"][0]["metadata"]["name"],
        "s"
    );
    api.delete("/v1/snapshots/s").await.expect(202);
    api.get("/v1/vms/absent/attestation")
        .await
        .expect_error(404, "NotFound");

    api.delete("/v1/volumes/v").await.expect(202);
    api.delete("/v1/images/k").await.expect(200);
    api.get("/v1/images/k").await.expect_error(404, "NotFound");
}
