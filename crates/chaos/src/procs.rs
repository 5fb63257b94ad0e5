//! What runs and what lies on disk, read from the host and not from corrald: the ground truth
//! the invariants compare the API's answers with.

use std::collections::BTreeMap;
use std::path::Path;

/// Live QEMU processes started for VMs under `run_dir`, by VM uid (the directory their
/// command line names). Zombies and other processes are left out.
pub fn qemus(run_dir: &Path) -> BTreeMap<String, Vec<u32>> {
    let vms_dir = format!("{}/vms/", run_dir.display());
    let mut found: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = raw
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !args.first().is_some_and(|a0| a0.contains("qemu-system")) {
            continue;
        }
        let uid = args.iter().find_map(|a| {
            let at = a.find(&vms_dir)?;
            let rest = &a[at + vms_dir.len()..];
            Some(rest.split('/').next()?.to_owned())
        });
        if let Some(uid) = uid {
            found.entry(uid).or_default().push(pid);
        }
    }
    found
}

/// The uid of the VM named `name` whose runtime directory under `run_dir` is the newest (its
/// launch record holds the name).
pub fn uid_of_name(run_dir: &Path, name: &str) -> Option<String> {
    let entries = std::fs::read_dir(run_dir.join("vms")).ok()?;
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let launch = e.path().join("launch.json");
            let modified = std::fs::metadata(&launch).ok()?.modified().ok()?;
            let record: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&launch).ok()?).ok()?;
            (record["config"]["name"] == name)
                .then(|| (modified, e.file_name().to_string_lossy().into_owned()))
        })
        .max()
        .map(|(_, uid)| uid)
}

/// The names of the regular files directly in `dir` (none when it does not exist).
pub fn files(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
