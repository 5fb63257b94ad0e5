//! Provisioning: a project VM's environment and shell steps, run as root over ssh by `up`.
//! What ran is kept on the VM (annotation `corral.dev/provisioned`: one short hash per step,
//! the environment first), so a step runs again only when it, or one before it, changed.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;

use corral_client::{Client, ClientError};
use corral_contract::names::annotations::PROVISIONED;
use corral_contract::{ResourceName, Vm};

use super::file::VmDecl;
use crate::{CliError, ssh};

/// How many of a failed step's last lines its error repeats.
const TAIL_LINES: usize = 40;

/// Where the environment's block starts and ends in /etc/environment.
const ENV_BEGIN: &str = "# corral.yaml env {";
const ENV_END: &str = "# corral.yaml env }";

/// The scripts to run, in order: the environment, then each step.
fn scripts(decl: &VmDecl) -> Vec<(String, String)> {
    let mut env = format!(
        "touch /etc/environment\nsed -i '/^{ENV_BEGIN}$/,/^{ENV_END}$/d' /etc/environment\n"
    );
    let vars = decl.env();
    if !vars.is_empty() {
        env += &format!("cat >> /etc/environment <<'CORRAL_ENV'\n{ENV_BEGIN}\n");
        for (key, value) in &vars {
            // Checked when the file was read: one line, no quotes or backslashes.
            env += &format!("{key}=\"{value}\"\n");
        }
        env += &format!("{ENV_END}\nCORRAL_ENV\n");
    }
    std::iter::once(("environment".to_owned(), env))
        .chain(
            decl.services()
                .map(|s| (format!("service {}", s.as_str()), s.setup().to_owned())),
        )
        .chain(
            decl.steps()
                .enumerate()
                .map(|(i, s)| (format!("step {}", i + 1), s.clone())),
        )
        .collect()
}

fn hash(script: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, script.as_bytes());
    digest.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn done(vm: &Vm) -> Vec<&str> {
    vm.metadata
        .annotations
        .get(PROVISIONED)
        .map(|v| v.split(',').filter(|h| !h.is_empty()).collect())
        .unwrap_or_default()
}

/// The index of the first script that must run (the count when none must).
fn first_to_run(done: &[&str], want: &[String]) -> usize {
    want.iter()
        .zip(done)
        .take_while(|(w, d)| w.as_str() == **d)
        .count()
}

/// `yes`, `no` or `changed`, for `corral status`.
pub fn state(vm: &Vm, decl: &VmDecl) -> &'static str {
    let want: Vec<String> = scripts(decl).iter().map(|(_, s)| hash(s)).collect();
    let done = done(vm);
    match first_to_run(&done, &want) {
        0 if done.is_empty() => "no",
        n if n == want.len() => "yes",
        _ => "changed",
    }
}

/// Runs what has not run on VM `name` yet (or changed since), streaming its output; a step
/// that fails stops `up` with its output's end.
pub async fn run(
    client: &Client,
    name: &ResourceName,
    decl: &VmDecl,
    identity: &Path,
) -> Result<(), CliError> {
    let vm = client.get_vm(name.as_str()).await?;
    let scripts = scripts(decl);
    let want: Vec<String> = scripts.iter().map(|(_, s)| hash(s)).collect();
    let start = first_to_run(&done(&vm), &want);
    if start == want.len() {
        if done(&vm).len() != want.len() {
            record(client, name, &want).await?;
        }
        return Ok(());
    }
    for (i, (what, script)) in scripts.iter().enumerate().skip(start) {
        println!("vm/{name} provisioning: {what}");
        // On a thread of its own: a step may take minutes, and the runtime must go on
        // serving the connection to corrald meanwhile (else its keepalive ends it).
        let (vm, identity, what, script) = (
            vm.clone(),
            identity.to_owned(),
            what.clone(),
            script.clone(),
        );
        tokio::task::spawn_blocking(move || run_script(&vm, &identity, &what, &script))
            .await
            .map_err(|e| CliError::Failed(format!("provisioning stopped: {e}")))??;
        record(client, name, &want[..=i]).await?;
    }
    println!("vm/{name} provisioned");
    Ok(())
}

/// Runs `script` with bash -e as root on the guest; its output (stdout and stderr) printed
/// line by line as it comes.
fn run_script(vm: &Vm, identity: &Path, what: &str, script: &str) -> Result<(), CliError> {
    let name = &vm.metadata.name;
    let mut cmd = ssh::command(vm, "root", identity)?;
    // The script comes on standard input: nothing of it is parsed by a shell on the way.
    cmd.args(["--", "bash", "-e", "-s"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| CliError::Failed(format!("running ssh: {e}")))?;
    let mut stdin = child.stdin.take().expect("piped");
    let body = format!("exec 2>&1\ncd /root\n{script}\n");
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(body.as_bytes());
    });
    let stderr = child.stderr.take().expect("piped");
    let ssh_errors = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
            text += &line;
            text.push('\n');
        }
        text
    });
    let mut tail = VecDeque::new();
    for line in BufReader::new(child.stdout.take().expect("piped"))
        .lines()
        .map_while(Result::ok)
    {
        println!("  {name} | {line}");
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
    let _ = writer.join();
    let status = child
        .wait()
        .map_err(|e| CliError::Failed(format!("waiting for ssh: {e}")))?;
    let ssh_errors = ssh_errors.join().unwrap_or_default();
    if status.success() {
        return Ok(());
    }
    let code = status
        .code()
        .map_or_else(|| "a signal".to_owned(), |c| format!("exit code {c}"));
    let mut output: Vec<String> = tail.into_iter().collect();
    output.extend(ssh_errors.lines().map(str::to_owned));
    Err(CliError::Failed(format!(
        "vm/{name}: provision {what} failed with {code}; it printed:\n{}",
        output.join("\n")
    )))
}

/// Records on the VM that the scripts of `hashes` ran.
async fn record(client: &Client, name: &ResourceName, hashes: &[String]) -> Result<(), CliError> {
    let mut last = None;
    for _ in 0..5 {
        let mut vm = client.get_vm(name.as_str()).await?;
        vm.metadata
            .annotations
            .insert(PROVISIONED.to_owned(), hashes.join(","));
        match client.update_vm(&vm).await {
            Ok(_) => return Ok(()),
            // The controller wrote status meanwhile: read again.
            Err(e @ ClientError::Conflict { .. }) => last = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    Err(last.expect("a conflict").into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl(steps: &[&str], env: &[(&str, &str)]) -> VmDecl {
        VmDecl {
            provision: steps.iter().map(|s| (*s).to_owned()).collect(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..VmDecl::default()
        }
    }

    fn hashes(d: &VmDecl) -> Vec<String> {
        scripts(d).iter().map(|(_, s)| hash(s)).collect()
    }

    #[test]
    fn only_changed_steps_and_those_after_them_run_again() {
        let first = hashes(&decl(&["a", "b"], &[]));
        let done: Vec<&str> = first.iter().map(String::as_str).collect();
        assert_eq!(first_to_run(&[], &first), 0);
        assert_eq!(first_to_run(&done, &first), 3);
        // A step added at the end: only it runs.
        assert_eq!(
            first_to_run(&done, &hashes(&decl(&["a", "b", "c"], &[]))),
            3
        );
        // The second changed: it and those after it.
        assert_eq!(
            first_to_run(&done, &hashes(&decl(&["a", "B", "c"], &[]))),
            2
        );
        // The environment changed: everything, as steps may read it.
        assert_eq!(
            first_to_run(&done, &hashes(&decl(&["a", "b"], &[("X", "1")]))),
            0
        );
    }

    #[test]
    fn the_environment_is_one_block_replaced_each_time() {
        let (_, env) = &scripts(&decl(&[], &[("A", "1 2"), ("B", "x")]))[0];
        assert!(env.contains("sed -i '/^# corral.yaml env {$/,/^# corral.yaml env }$/d'"));
        assert!(env.contains("# corral.yaml env {\nA=\"1 2\"\nB=\"x\"\n# corral.yaml env }\n"));
    }
}
