//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::time::Duration;

use corral_store::{Object, StoreError, WatchEvent, WatchStream};
use serde_json::json;

/// A small VM-like object.
pub fn vm(name: &str) -> Object {
    Object::new(
        "Vm",
        name,
        format!("uid-{name}"),
        json!({"metadata": {"name": name}, "spec": {"cpus": 2, "memory": "1GiB", "power": "running"}})
            .to_string(),
    )
}

/// The next event, failing the test after 10 s or on an error or the end of the stream.
pub async fn next(stream: &mut WatchStream) -> WatchEvent {
    match next_item(stream).await {
        Some(Ok(event)) => event,
        Some(Err(e)) => panic!("watch failed: {e}"),
        None => panic!("watch ended"),
    }
}

/// The next item, failing the test after 10 s.
pub async fn next_item(stream: &mut WatchStream) -> Option<Result<WatchEvent, StoreError>> {
    tokio::time::timeout(Duration::from_secs(10), stream.recv())
        .await
        .expect("no watch event within 10 s")
}

/// Asserts that nothing arrives on the stream for a short while.
pub async fn assert_quiet(stream: &mut WatchStream) {
    let got = tokio::time::timeout(Duration::from_millis(200), stream.recv()).await;
    assert!(got.is_err(), "unexpected watch item: {got:?}");
}
