//! The web console in a real browser: Debian's headless chromium driven by Playwright
//! (`ui/tests/console.spec.js`) against this corrald and a real guest from the guest kit. It
//! logs in with a `corral ui` link, creates a VM from the form and sees it reach Running
//! without a reload, types in the serial console and reads the guest's answer, watches the RAM
//! map's frames, pauses and resumes, sees a bad value's error at its field, deletes — with
//! axe-core on every page (no serious or critical violation) and screenshots under
//! target/ui-artifacts/. The bundle's gzipped size is printed and held to 300 KiB without
//! xterm.js.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use corral_contract::Arch;
use corral_testkit::{GuestKit, workspace_root};

/// Playwright's whole run (a guest boots under TCG in it).
const BUDGET: Duration = Duration::from_secs(420);
const CHROMIUM: &str = "/usr/bin/chromium";

#[tokio::test(flavor = "multi_thread")]
async fn the_console_manages_a_real_vm_in_chromium() {
    let root = workspace_root();
    let ui = root.join("ui");
    let playwright = ui.join("node_modules/.bin/playwright");
    assert!(
        playwright.exists(),
        "{} is missing: run scripts/setup.sh (npm ci in ui/)",
        playwright.display()
    );
    assert!(
        PathBuf::from(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run scripts/setup.sh (Debian's chromium)"
    );
    let kit = GuestKit::get(Arch::X86_64).expect("the guest kit");
    let d = common::daemon();
    let api = common::api(&d);

    let sizes = api.get("/ui/assets/sizes.json").await;
    assert_eq!(
        sizes.status, 200,
        "this corrald embeds the placeholder page, not the console: it was built before \
         `npm ci --prefix ui`; build again"
    );
    let sizes = sizes.json();
    let without = sizes["gzipWithoutXterm"].as_u64().unwrap();
    let total = sizes["gzipTotal"].as_u64().unwrap();
    println!(
        "console bundle: {:.1} KiB gzipped without xterm.js, {:.1} KiB with it",
        without as f64 / 1024.0,
        total as f64 / 1024.0
    );
    assert!(without <= 300 << 10, "the bundle is over 300 KiB gzipped");

    let link = api
        .post("/v1/ui/links", &serde_json::json!({}))
        .await
        .expect(201);
    let artifacts = root.join("target/ui-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let mut child = Command::new(&playwright)
        .arg("test")
        .current_dir(&ui)
        .env("CORRAL_UI_LINK", link["url"].as_str().unwrap())
        .env("CORRAL_KERNEL", kit.kernel())
        .env("CORRAL_INITRD", kit.initrd())
        .env(
            "CORRAL_CMDLINE",
            format!("console={} quiet panic=-1", kit.console()),
        )
        .env("CORRAL_UI_ARTIFACTS", &artifacts)
        .env("CORRAL_CHROMIUM", CHROMIUM)
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("Playwright starts");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > BUDGET {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "Playwright ran past {BUDGET:?}:\n{}{}\n--- corrald log ---\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                d.log()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");
    assert!(
        status.success(),
        "the browser test failed ({status}); screenshots and traces in {}:\n{report}\n--- corrald \
         log ---\n{}",
        artifacts.display(),
        d.log()
    );
    for page in [
        "vms",
        "vm-detail",
        "vm-charts",
        "console",
        "ram-map",
        "create-error",
    ] {
        assert!(
            artifacts.join(format!("{page}.png")).exists(),
            "no screenshot of {page}"
        );
    }
}
