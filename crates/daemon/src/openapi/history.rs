//! A VM's CPU and memory history.

use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};

use super::{common, error, integer, json_response, name_param, op, query, uint};
use crate::vms::history::{CAPACITY, INTERVAL};

pub(super) fn get_vm_metrics_history() -> Operation {
    let sample = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property(
            "time",
            integer(0, None).description(Some("When, in seconds since the Unix epoch")),
        )
        .required("time")
        .property(
            "cpu",
            ObjectBuilder::new()
                .schema_type(Type::Number)
                .minimum(Some(uint(0)))
                .description(Some(
                    "CPU used by the VM's QEMU process since the previous sample, in cores \
                     (1.0 = one core busy the whole interval)",
                )),
        )
        .required("cpu")
        .property(
            "memory_bytes",
            integer(0, None).description(Some("Resident memory of the VM's QEMU process")),
        )
        .required("memory_bytes");
    let body = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property(
            "interval_seconds",
            integer(INTERVAL.as_secs(), Some(INTERVAL.as_secs()))
                .description(Some("Time between two samples")),
        )
        .required("interval_seconds")
        .property(
            "capacity",
            integer(CAPACITY as u64, Some(CAPACITY as u64))
                .description(Some("Samples kept per VM, the oldest dropped first")),
        )
        .required("capacity")
        .property(
            "samples",
            ArrayBuilder::new()
                .items(sample)
                .max_items(Some(CAPACITY))
                .description(Some("Oldest first")),
        )
        .required("samples");
    common(op(&format!(
        "The VM's CPU and memory history: a sample every {} s for the last day, kept by the \
         node that runs it (in memory: a daemon restart starts afresh; deleting the VM drops it)",
        INTERVAL.as_secs()
    )))
    .parameter(name_param())
    .parameter(query(
        "since",
        integer(0, None),
        false,
        "Only samples taken after this time (seconds since the Unix epoch); 0, the default, for all",
    ))
    .response("200", json_response("The samples", body.build().into()))
    .response("400", error("The name or query string does not parse"))
    .response("404", error("No VM of that name"))
    .build()
}
