//! Bodies that are not objects where the contract has a struct are refused, naming the field:
//! serde's derive would read `{"spec": [a, b]}` as a spec.

use corral_contract::{Resource, from_json};
use serde_json::{Value, json};

fn resource(body: &Value) -> Result<Resource, String> {
    from_json::<Resource>(body.to_string().as_bytes()).map_err(|e| e.to_string())
}

fn refused(body: Value, field: &str) {
    let err = resource(&body).expect_err(&format!("accepted {body}"));
    let want = format!("{field}: expected an object, got an array");
    assert!(
        err.starts_with(&want),
        "{body}\n  got: {err}\n want: {want}"
    );
    // The same through serde_json's own entry point: the kinds are strict by themselves.
    let err = serde_json::from_value::<Resource>(body)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with(&want), "from_value: {err}");
}

fn meta() -> Value {
    json!({"name": "a"})
}

#[test]
fn the_valid_forms_still_parse() {
    for body in [
        json!({"kind": "Vm", "metadata": meta(), "spec": {"boot": {"kernel": {"kernel": "/k"}},
            "networks": [{"network": "n", "forwards": [{"guest_port": 22}]}],
            "volumes": [{"volume": "v"}], "cloud_init": {"user_data": "#!/bin/sh\n"}}}),
        json!({"kind": "Network", "metadata": meta(), "spec": {}}),
        json!({"kind": "Image", "metadata": meta(), "spec": {"source": {"path": "/i.qcow2"}}}),
        json!({"kind": "Image", "metadata": meta(), "spec": {"source": {"upload": {}}}}),
        json!({"kind": "Volume", "metadata": meta(), "spec": {"size": "1G"}}),
        json!({"kind": "Snapshot", "metadata": meta(), "spec": {"vm": "a"}, "status": {}}),
    ] {
        resource(&body).unwrap_or_else(|e| panic!("{body}: {e}"));
    }
}

#[test]
fn every_kind_refuses_an_array_spec() {
    for (kind, spec) in [
        ("Vm", json!({"boot": {"volume": {"volume": "v"}}})),
        ("Network", json!({})),
        ("Image", json!({"source": {"url": "http://x/i"}})),
        ("Volume", json!({"size": 512})),
        ("Snapshot", json!({"vm": "a"})),
    ] {
        refused(
            json!({"kind": kind, "metadata": meta(), "spec": [null, null]}),
            "spec",
        );
        refused(
            json!({"kind": kind, "metadata": ["a"], "spec": spec}),
            "metadata",
        );
        refused(
            json!({"kind": kind, "metadata": meta(), "spec": spec, "status": ["Ready"]}),
            "status",
        );
    }
}

#[test]
fn nested_structs_refuse_arrays_too() {
    let vm = |spec: Value| json!({"kind": "Vm", "metadata": meta(), "spec": spec});
    refused(vm(json!({"boot": {"kernel": ["/k"]}})), "spec.boot.kernel");
    refused(
        vm(json!({"boot": {"volume": {"volume": "v"}}, "volumes": [["v", true]]})),
        "spec.volumes[0]",
    );
    refused(
        vm(
            json!({"boot": {"volume": {"volume": "v"}}, "networks": [{"network": "n", "forwards": [[22]]}]}),
        ),
        "spec.networks[0].forwards[0]",
    );
    refused(
        vm(json!({"boot": {"volume": {"volume": "v"}}, "cloud_init": ["#!/bin/sh"]})),
        "spec.cloud_init",
    );
    refused(
        json!({"kind": "Image", "metadata": meta(), "spec": {"source": {"upload": [null]}}}),
        "spec.source.upload",
    );
    refused(
        json!({"kind": "Vm", "metadata": meta(), "spec": {"boot": {"volume": {"volume": "v"}}},
            "status": {"exit": [1, 2, "x"]}}),
        "status.exit",
    );
}

#[test]
fn a_resource_is_not_an_array_either() {
    // serde's internally tagged form reads the tag from the first element of a sequence.
    let err = resource(&json!(["Vm", meta(), {"boot": {"volume": {"volume": "v"}}}])).unwrap_err();
    assert!(err.contains("expected an object, got an array"), "{err}");
}
