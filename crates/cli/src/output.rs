//! Printing resources: a table for people, or JSON and YAML in the manifest schema.

use std::time::{Duration, SystemTime};

use corral_contract::{Resource, Vm};

use crate::args::Format;

/// Set once from `--all-projects`: tables then name objects `PROJECT/NAME`.
pub static ALL_PROJECTS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// An object's name in a table: `PROJECT/NAME` when listing every project.
pub fn row_name(meta: &corral_contract::ObjectMeta) -> String {
    if ALL_PROJECTS.load(std::sync::atomic::Ordering::Relaxed) {
        format!("{}/{}", meta.project(), meta.name)
    } else {
        meta.name.to_string()
    }
}

const COLUMNS: [&str; 7] = ["NAME", "PHASE", "CPUS", "MEMORY", "ARCH", "PID", "AGE"];

/// VMs in `format`. JSON is an array of `{kind, metadata, spec, status}`; YAML is one
/// document per VM, which `corral apply -f` reads back.
pub fn vms(vms: &[Vm], format: Format, now: SystemTime) -> Result<String, serde_json::Error> {
    Ok(match format {
        Format::Table => table(vms, now),
        Format::Json => {
            let resources: Vec<Resource> = vms.iter().cloned().map(Resource::from).collect();
            serde_json::to_string_pretty(&resources)? + "\n"
        }
        Format::Yaml => vms
            .iter()
            .map(|vm| yaml(&Resource::from(vm.clone())))
            .collect::<Vec<_>>()
            .join("---\n"),
    })
}

/// One VM in `format`: JSON is one `{kind, metadata, spec, status}` object.
pub fn vm(vm: &Vm, format: Format, now: SystemTime) -> Result<String, serde_json::Error> {
    match format {
        Format::Json => Ok(serde_json::to_string_pretty(&Resource::from(vm.clone()))? + "\n"),
        _ => vms(std::slice::from_ref(vm), format, now),
    }
}

/// Any value as YAML, in its JSON shape: a boot source is `kernel: {…}`, not serde_yaml_ng's
/// `!kernel` tag, so that the output reads as the API's schema and applies again.
pub fn yaml<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .map_err(|e| e.to_string())
        .and_then(|json| serde_yaml_ng::to_string(&json).map_err(|e| e.to_string()))
        .unwrap_or_else(|e| format!("# cannot print as YAML: {e}\n"))
}

/// Left-aligned columns, two spaces apart, as `kubectl get` prints them.
fn table(vms: &[Vm], now: SystemTime) -> String {
    let header = COLUMNS.map(str::to_owned);
    let rows: Vec<[String; 7]> = std::iter::once(header)
        .chain(vms.iter().map(|vm| row(vm, now)))
        .collect();
    columns(&rows)
}

/// Rows (the first is the header) as left-aligned columns, two spaces apart.
pub fn columns<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn row(vm: &Vm, now: SystemTime) -> [String; 7] {
    let phase = if vm.metadata.deleting {
        "Deleting".to_owned()
    } else {
        vm.status.phase.to_string()
    };
    [
        row_name(&vm.metadata),
        phase,
        vm.spec.cpus.to_string(),
        vm.spec.memory.to_string(),
        vm.spec.arch.to_string(),
        vm.status
            .pid
            .map_or_else(|| "-".to_owned(), |pid| pid.to_string()),
        vm.metadata
            .created_at
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
            .map_or_else(|| "-".to_owned(), |created| age(now, created)),
    ]
}

/// How long ago, in its largest unit: `42s`, `5m`, `3h`, `12d`.
pub fn age(now: SystemTime, then: SystemTime) -> String {
    let secs = now.duration_since(then).unwrap_or(Duration::ZERO).as_secs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_contract::{Boot, Phase, VmSpec};

    fn sample(name: &str) -> Vm {
        let spec = VmSpec::builder(Boot::kernel("/k/vmlinuz"))
            .cpus(2)
            .build()
            .unwrap();
        let mut vm = Vm::new(name.parse().unwrap(), spec);
        vm.metadata.created_at = Some("2026-01-01T00:00:00.000Z".into());
        vm.status.phase = Phase::Running;
        vm.status.pid = Some(4242);
        vm
    }

    fn at(rfc3339: &str) -> SystemTime {
        humantime::parse_rfc3339_weak(rfc3339).unwrap()
    }

    #[test]
    fn json_is_the_manifest_shape_with_status_phase() {
        let now = at("2026-01-01T00:05:00Z");
        let one: serde_json::Value =
            serde_json::from_str(&vm(&sample("a"), Format::Json, now).unwrap()).unwrap();
        assert_eq!(one["kind"], "Vm");
        assert_eq!(one["metadata"]["name"], "a");
        assert_eq!(one["spec"]["cpus"], 2);
        assert_eq!(one["status"]["phase"], "Running");
        assert_eq!(
            one.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["kind", "metadata", "spec", "status"]
        );

        let list = vms(&[sample("a"), sample("b")], Format::Json, now).unwrap();
        let list: serde_json::Value = serde_json::from_str(&list).unwrap();
        assert_eq!(list.as_array().unwrap().len(), 2);
        assert_eq!(list[1]["metadata"]["name"], "b");
        assert_eq!(list[1]["status"]["phase"], "Running");
        assert_eq!(vms(&[], Format::Json, now).unwrap(), "[]\n");
    }

    #[test]
    fn yaml_is_one_document_per_vm_and_parses_back() {
        let now = SystemTime::now();
        let text = vms(&[sample("a"), sample("b")], Format::Yaml, now).unwrap();
        assert!(text.starts_with("kind: Vm\nmetadata:\n"), "{text}");
        assert_eq!(text.matches("\n---\n").count(), 1, "{text}");
        let parsed = corral_contract::manifest::parse("out.yaml", &text).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].as_vm().unwrap().spec, sample("a").spec);
    }

    #[test]
    fn table_has_a_header_and_aligned_rows() {
        let now = at("2026-01-01T02:00:00Z");
        let mut b = sample("bravo-long-name");
        b.status.phase = Phase::Stopped;
        b.status.pid = None;
        b.metadata.created_at = None;
        let text = vms(&[sample("a"), b], Format::Table, now).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "NAME             PHASE    CPUS  MEMORY  ARCH    PID   AGE"
        );
        assert_eq!(
            lines[1],
            "a                Running  2     512M    x86_64  4242  2h"
        );
        assert_eq!(
            lines[2],
            "bravo-long-name  Stopped  2     512M    x86_64  -     -"
        );
        assert_eq!(
            vms(&[], Format::Table, now).unwrap(),
            format!(
                "{}\n",
                lines[0].split_whitespace().collect::<Vec<_>>().join("  ")
            )
        );
    }

    #[test]
    fn ages_use_the_largest_unit() {
        let then = at("2026-01-01T00:00:00Z");
        let after = |secs| age(then + Duration::from_secs(secs), then);
        assert_eq!(after(42), "42s");
        assert_eq!(after(300), "5m");
        assert_eq!(after(3 * 3600 + 59), "3h");
        assert_eq!(after(12 * 86400), "12d");
        assert_eq!(age(then, then + Duration::from_secs(5)), "0s");
    }
}
