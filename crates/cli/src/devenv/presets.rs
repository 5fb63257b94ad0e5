//! Presets by name: the built-in language presets, or a user's own in
//! `~/.config/corral/presets/NAME.yaml` (`packages`, `provision`, `env`), which win over a
//! built-in of the same name.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::file::Preset;

/// A user's preset file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UserPreset {
    /// Debian packages the image gets.
    #[serde(default)]
    packages: Vec<String>,
    /// Shell steps run before the VM's own.
    #[serde(default)]
    provision: Vec<String>,
    /// Environment variables; the VM's own win.
    #[serde(default)]
    env: BTreeMap<String, String>,
}

/// A preset as `up` uses it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PresetDef {
    /// What the image's name carries for it: the name, and for a user's preset a hash of its
    /// packages too, so that changing them builds a new image.
    pub image_word: String,
    /// Debian packages the image gets.
    pub packages: Vec<String>,
    /// Shell steps run before the VM's own.
    pub provision: Vec<String>,
    /// Environment variables under the VM's own.
    pub env: BTreeMap<String, String>,
}

/// Where a user's presets are: `$CORRAL_PRESETS_DIR`, else
/// `$XDG_CONFIG_HOME/corral/presets` (`~/.config/corral/presets`).
pub fn dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CORRAL_PRESETS_DIR") {
        return PathBuf::from(dir);
    }
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("corral/presets")
}

/// The preset `name`: `dir/NAME.yaml` if there is one, else the built-in one.
pub fn resolve(name: &str, dir: &Path) -> Result<PresetDef, String> {
    let path = dir.join(format!("{name}.yaml"));
    if path.is_file() {
        return user(name, &path);
    }
    let builtin = Preset::ALL.into_iter().find(|p| p.as_str() == name);
    match builtin {
        Some(p) => Ok(PresetDef {
            image_word: name.to_owned(),
            packages: p.packages().iter().map(|s| (*s).to_owned()).collect(),
            ..PresetDef::default()
        }),
        None => {
            let names: Vec<&str> = Preset::ALL.iter().map(|p| p.as_str()).collect();
            Err(format!(
                "no preset {name:?}: the built-in ones are {}; yours go in {}",
                names.join(", "),
                path.display()
            ))
        }
    }
}

fn user(name: &str, path: &Path) -> Result<PresetDef, String> {
    let source = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {source}: {e}"))?;
    let de = serde_yaml_ng::Deserializer::from_str(&text);
    let preset: UserPreset = serde_path_to_error::deserialize(de).map_err(|e| {
        let inner = e.into_inner();
        let at = inner
            .location()
            .map_or_else(String::new, |l| format!("{}:{}: ", l.line(), l.column()));
        format!("{source}:{at}{inner}")
    })?;
    for (i, p) in preset.packages.iter().enumerate() {
        // The image build checks them again against Debian's rules; this only keeps the
        // image's name and hash honest.
        let ok = p.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
        if !ok {
            return Err(format!(
                "{source}: packages[{i}]: {p:?} is not a Debian package name"
            ));
        }
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, preset.packages.join(",").as_bytes());
    let hash: String = digest.as_ref()[..3]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(PresetDef {
        image_word: format!("{name}-{hash}"),
        packages: preset.packages,
        provision: preset.provision,
        env: preset.env,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_preset_wins_and_its_packages_name_its_image() {
        let dir = tempfile::tempdir().unwrap();
        let rust = resolve("rust", dir.path()).unwrap();
        assert_eq!(rust.image_word, "rust");
        assert!(rust.packages.contains(&"cargo".to_owned()));
        let err = resolve("cobol", dir.path()).unwrap_err();
        assert!(
            err.contains("built-in ones are rust, node, python, go"),
            "{err}"
        );
        assert!(err.contains("cobol.yaml"), "{err}");

        std::fs::write(
            dir.path().join("rust.yaml"),
            "packages: [rustc, clang]\nprovision: [echo hi]\nenv: {CC: clang}\n",
        )
        .unwrap();
        let mine = resolve("rust", dir.path()).unwrap();
        assert!(mine.image_word.starts_with("rust-"), "{mine:?}");
        assert_eq!(mine.packages, ["rustc", "clang"]);
        assert_eq!(mine.provision, ["echo hi"]);
        assert_eq!(mine.env["CC"], "clang");
        std::fs::write(dir.path().join("rust.yaml"), "packages: [rustc]\n").unwrap();
        assert_ne!(
            resolve("rust", dir.path()).unwrap().image_word,
            mine.image_word
        );

        std::fs::write(dir.path().join("bad.yaml"), "packages: [x]\npackage: [y]\n").unwrap();
        let err = resolve("bad", dir.path()).unwrap_err();
        assert!(
            err.contains("bad.yaml:2:") && err.contains("unknown field `package`"),
            "{err}"
        );
        std::fs::write(
            dir.path().join("evil.yaml"),
            "packages: [\"--force-yes\"]\n",
        )
        .unwrap();
        let err = resolve("evil", dir.path()).unwrap_err();
        assert!(err.contains("packages[0]"), "{err}");
    }
}
