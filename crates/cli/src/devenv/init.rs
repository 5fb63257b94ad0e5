//! `corral init`: a first corral.yaml, its preset chosen from the project's files.

use std::path::{Path, PathBuf};

use super::file::{FILE_NAME, Preset, folder_name};
use crate::CliError;

/// The presets whose marker files are in `dir`.
pub fn detect(dir: &Path) -> Vec<Preset> {
    Preset::ALL
        .into_iter()
        .filter(|p| p.markers().iter().any(|m| dir.join(m).is_file()))
        .collect()
}

/// The text of a new corral.yaml for a project with `presets`: the first one picks the VM's
/// image; every field is shown, commented where the default does.
pub fn text(presets: &[Preset]) -> String {
    let preset = match presets.first() {
        Some(p) => format!("    preset: {}\n", p.as_str()),
        None => "    # preset: rust | node | python | go\n    image: debian-12\n".to_owned(),
    };
    format!(
        "# This project's development VMs: `corral up` creates and starts them, `corral ssh`\n\
         # logs in, `corral down` stops them, `corral destroy` deletes them.\n\
         # Schema: `corral schema` prints it (JSON Schema).\n\
         vms:\n  \
           dev:\n\
         {preset}    \
             cpus: 2\n    \
             memory: 2G\n    \
             # disk: 10G\n    \
             # Guest ports reachable from the host: GUEST or \"GUEST:HOST\"\n    \
             ports: []\n    \
             # Shell steps run as root at the first `up`, and again when they change\n    \
             provision:\n      \
               - echo provisioned > /etc/motd\n    \
             env: {{}}\n"
    )
}

/// Writes `dir/corral.yaml`, refusing to replace one unless `force`. Returns its path and the
/// presets found.
pub fn write(dir: &Path, force: bool) -> Result<(PathBuf, Vec<Preset>), CliError> {
    let path = dir.join(FILE_NAME);
    if path.exists() && !force {
        return Err(CliError::Failed(format!(
            "{} exists: edit it, or replace it with `corral init --force`",
            path.display()
        )));
    }
    let abs = dir
        .canonicalize()
        .map_err(|e| CliError::Failed(format!("{}: {e}", dir.display())))?;
    let presets = detect(&abs);
    let mut text = text(&presets);
    // A folder whose name makes no project name gets one written out.
    if folder_name(&abs).is_err() {
        text = format!("name: project\n{text}");
    }
    std::fs::write(&path, text)
        .map_err(|e| CliError::Failed(format!("cannot write {}: {e}", path.display())))?;
    Ok((path, presets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_come_from_the_project_files_and_the_file_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let project = dir.path().join("shop");
        std::fs::create_dir(&project).unwrap();
        assert!(detect(&project).is_empty());
        std::fs::write(project.join("package.json"), "{}").unwrap();
        std::fs::write(project.join("requirements.txt"), "").unwrap();
        assert_eq!(detect(&project), [Preset::Node, Preset::Python]);

        let (path, presets) = write(&project, false).unwrap();
        assert_eq!(presets[0], Preset::Node);
        let read = super::super::file::load(&path).unwrap();
        assert_eq!(read.name, "shop");
        let dev = read.file.vms.values().next().unwrap();
        assert_eq!(dev.preset.as_ref().unwrap(), "node");
        assert_eq!(dev.image(), "debian-12-node");
        assert_eq!(dev.provision.len(), 1);

        let err = write(&project, false).unwrap_err().to_string();
        assert!(err.contains("corral init --force"), "{err}");
        std::fs::write(project.join("Cargo.toml"), "").unwrap();
        let (_, presets) = write(&project, true).unwrap();
        assert_eq!(presets[0], Preset::Rust);

        // Every preset's file parses.
        for p in Preset::ALL {
            super::super::file::parse("corral.yaml", &text(&[p]), &project, dir.path()).unwrap();
        }
        super::super::file::parse("corral.yaml", &text(&[]), &project, dir.path()).unwrap();
    }
}
