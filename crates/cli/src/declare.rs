//! `corral apply` and `corral diff`: manifests sent to corrald's one apply call, as an owner
//! (with prune) or not; diff is the same call as a dry run.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use corral_client::Client;
use corral_contract::{ApplyAction, ApplyReport, ApplyRequest, Resource};

use crate::args::{ApplyArgs, ConnectionArgs, DiffArgs, Format};
use crate::commands::{endpoint, print};
use crate::converge::{Target, wait_all};
use crate::{CliError, create};
use corral_contract::manifest;

/// Exit code of `corral diff` when applying would change something.
const DIFF_CHANGES: u8 = 2;

/// Every resource of the manifests at `paths`: files, `-` for standard input, or directories
/// (their `.yaml`, `.yml` and `.json` files, recursively, in name order). Fails on the first
/// bad document, or a resource declared twice, before anything is sent.
pub fn read_manifests(paths: &[PathBuf]) -> Result<Vec<Resource>, CliError> {
    let mut resources = Vec::new();
    let mut seen = BTreeSet::new();
    for path in paths {
        let mut files = Vec::new();
        let in_directory = path.as_os_str() != "-" && path.is_dir();
        if in_directory {
            collect(path, &mut files)?;
            if files.is_empty() {
                return Err(CliError::Failed(format!(
                    "{}: no .yaml, .yml or .json files in this directory",
                    path.display()
                )));
            }
        } else {
            files.push(path.clone());
        }
        for file in files {
            let (source, text) = read(&file)?;
            let parsed = if in_directory {
                manifest::parse_any(&source, &text)?
            } else {
                manifest::parse(&source, &text)?
            };
            for r in parsed {
                let key = (r.kind(), r.metadata().name.to_string());
                if !seen.insert(key) {
                    return Err(CliError::Failed(format!(
                        "{source}: {}/{} is declared in an earlier file too: keep one",
                        r.kind().as_str().to_lowercase(),
                        r.metadata().name
                    )));
                }
                resources.push(r);
            }
        }
    }
    Ok(resources)
}

fn read(path: &Path) -> Result<(String, String), CliError> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| CliError::Failed(format!("cannot read standard input: {e}")))?;
        return Ok(("<stdin>".to_owned(), text));
    }
    let source = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Failed(format!("cannot read {source}: {e}")))?;
    Ok((source, text))
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), CliError> {
    let cannot =
        |e: std::io::Error| CliError::Failed(format!("cannot read {}: {e}", dir.display()));
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(cannot)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(cannot)?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect(&path, out)?;
        } else if path
            .extension()
            .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
        {
            out.push(path);
        }
    }
    Ok(())
}

fn words(kind: corral_contract::Kind, name: &str) -> String {
    format!("{}/{name}", kind.as_str().to_lowercase())
}

/// Connects for an apply of `resources`: in the project they name (all the same one, or
/// none), else the one the flags or CORRAL_PROJECT name. One apply acts in one project.
async fn connect_for(
    endpoint: corral_client::Endpoint,
    connection: &ConnectionArgs,
    resources: &[Resource],
) -> Result<Client, CliError> {
    let mut named = resources
        .iter()
        .filter_map(|r| r.metadata().project.as_ref());
    let first = named.next();
    if let Some(other) = named.find(|p| Some(*p) != first) {
        return Err(CliError::Usage(format!(
            "the manifests name projects {:?} and {:?}: one apply acts in one project; \
             apply each project's resources on their own",
            first.map(|p| p.as_str()).unwrap_or_default(),
            other.as_str()
        )));
    }
    let client = crate::commands::connect_to(endpoint, connection).await?;
    match first {
        Some(p) if connection.project.is_empty() => {
            Ok(client.in_project(Some(p.as_str()), connection.all_projects)?)
        }
        _ => Ok(client),
    }
}

/// Sends the manifests as one apply; with `--wait`, follows what was applied.
pub async fn apply(connection: &ConnectionArgs, args: &ApplyArgs) -> Result<(), CliError> {
    let resources = read_manifests(&args.files)?;
    let endpoint = endpoint(connection)?;
    if endpoint.is_local() {
        for vm in resources.iter().filter_map(Resource::as_vm) {
            create::check_boot_files(vm)
                .map_err(|e| CliError::Failed(format!("vm/{}: {e}", vm.metadata.name)))?;
        }
    }
    let client = connect_for(endpoint, connection, &resources).await?;
    let request = ApplyRequest {
        owner: args.owner.clone(),
        prune: args.prune,
        allow_mass_prune: args.allow_mass_prune,
        dry_run: false,
        resources: resources.clone(),
    };
    let report = client.apply(&request).await?;
    print_report(&report, args.output.format, false)?;
    if args.wait {
        let targets = report
            .items
            .iter()
            .filter(|i| i.action != ApplyAction::Prune)
            .map(|i| Target {
                kind: i.kind,
                name: i.name.clone(),
                power: resources
                    .iter()
                    .filter_map(Resource::as_vm)
                    .find(|vm| vm.metadata.name.as_str() == i.name)
                    .map(|vm| vm.spec.power),
                project: None,
            })
            .collect::<Vec<_>>();
        if !targets.is_empty() {
            return wait_all(&client, targets, args.timeout).await;
        }
    }
    Ok(())
}

/// What apply would do, from the server's dry run: exit 0 when nothing would change, 2 when
/// something would, 1 on error.
pub async fn diff(connection: &ConnectionArgs, args: &DiffArgs) -> Result<(), CliError> {
    let failed = |e: CliError| match e {
        CliError::Client(e) => CliError::Failed(e.to_string()),
        e => e,
    };
    let resources = read_manifests(&args.files).map_err(failed)?;
    let client = connect_for(
        endpoint(connection).map_err(failed)?,
        connection,
        &resources,
    )
    .await
    .map_err(|e| CliError::Failed(e.to_string()))?;
    let request = ApplyRequest {
        owner: args.owner.clone(),
        prune: args.prune,
        allow_mass_prune: false,
        dry_run: true,
        resources,
    };
    let report = client
        .apply(&request)
        .await
        .map_err(|e| CliError::Failed(e.to_string()))?;
    print_report(&report, args.output.format, true)?;
    if report.changes_anything() {
        return Err(CliError::Reported(DIFF_CHANGES));
    }
    Ok(())
}

pub(crate) fn print_report(
    report: &ApplyReport,
    format: Format,
    diff: bool,
) -> Result<(), CliError> {
    match format {
        Format::Json => return print(&(serde_json::to_string_pretty(report)? + "\n")),
        Format::Yaml => {
            let yaml = serde_yaml_ng::to_string(report)
                .map_err(|e| CliError::Failed(format!("cannot encode the output: {e}")))?;
            return print(&yaml);
        }
        Format::Table => {}
    }
    let mut text = String::new();
    for item in &report.items {
        let what = words(item.kind, &item.name);
        if !diff {
            text += &format!("{what} {}\n", item.action.as_str(false));
            continue;
        }
        match item.action {
            ApplyAction::Unchanged => {}
            ApplyAction::Create => text += &format!("+ {what} (create)\n"),
            ApplyAction::Prune => text += &format!("- {what} (prune)\n"),
            ApplyAction::Change => {
                text += &format!("~ {what}\n");
                for c in &item.changes {
                    let show = |v: &Option<serde_json::Value>| {
                        v.as_ref().map_or("(unset)".to_owned(), ToString::to_string)
                    };
                    text += &format!(
                        "    {}: {} -> {}\n",
                        c.path,
                        show(&c.before),
                        show(&c.after)
                    );
                }
            }
        }
    }
    if diff && text.is_empty() {
        text = "no changes\n".into();
    }
    print(&text)
}
