//! Embeds the web console. With the npm packages of `ui/` installed (`npm ci --prefix ui`,
//! which scripts/setup.sh runs), `ui/build.mjs` bundles it with esbuild into OUT_DIR and every
//! file it writes is embedded; without them corrald still builds, and its console is one page
//! saying how to build the real one. Nothing is fetched: the bundle is made offline.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const PLACEHOLDER: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>Corral console not built</title></head><body><main><h1>The web console was not built \
into this corrald</h1><p>Install its packages and build again:</p>\
<pre>npm ci --prefix ui\ncargo build -p corral-daemon</pre>\
<p>(<code>scripts/setup.sh</code> does the first step.)</p></main></body></html>\n";

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let ui = manifest.join("../../ui");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it"));
    let dist = out.join("ui");
    let _ = std::fs::remove_dir_all(&dist);
    std::fs::create_dir_all(&dist).expect("creating OUT_DIR/ui");
    for watched in ["src", "build.mjs", "package-lock.json"] {
        println!("cargo:rerun-if-changed={}", ui.join(watched).display());
    }
    let esbuild = ui.join("node_modules/esbuild/package.json");
    let built = if esbuild.exists() {
        println!(
            "cargo:rerun-if-changed={}",
            ui.join("node_modules/.package-lock.json").display()
        );
        let status = Command::new("node")
            .arg(ui.join("build.mjs"))
            .arg(&dist)
            .current_dir(&ui)
            .status()
            .expect("running node ui/build.mjs (install Debian's nodejs)");
        assert!(status.success(), "node ui/build.mjs failed: {status}");
        true
    } else {
        // Installing the packages creates node_modules, which changes ui/.
        println!("cargo:rerun-if-changed={}", ui.display());
        std::fs::write(dist.join("index.html"), PLACEHOLDER).expect("writing the placeholder");
        false
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dist)
        .expect("reading OUT_DIR/ui")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut code =
        String::from("/// The console's files.\npub static ASSETS: &[(&str, &[u8])] = &[\n");
    for file in &files {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a UTF-8 name");
        writeln!(code, "    ({name:?}, include_bytes!({:?})),", path(file)).unwrap();
    }
    code.push_str("];\n");
    writeln!(
        code,
        "/// Whether they were built from ui/.\npub const BUILT: bool = {built};"
    )
    .unwrap();
    std::fs::write(out.join("ui_assets.rs"), code).expect("writing ui_assets.rs");
}

fn path(p: &Path) -> String {
    p.to_str().expect("a UTF-8 path").to_owned()
}
