//! `vm create`: from flags to a validated VM, before anything is sent.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use corral_contract::names::annotations::{EXPIRES_AT, OWNER_VM};
use corral_contract::{
    Boot, ByteSize, ObjectMeta, Power, ResourceName, ValidationError, Vm, VmSpec, Volume,
    VolumeSpec,
};

use crate::CliError;
use crate::args::CreateArgs;

/// The VM the flags describe, with relative paths made absolute from `cwd`. Errors name the
/// flag and the spec field (`--machine: spec.machine: virt is not available on x86_64 …`).
pub fn vm_from_flags(args: &CreateArgs, cwd: &Path) -> Result<Vm, CliError> {
    let boot = match (&args.kernel, &args.disk) {
        _ if args.boot_volume.is_some() || args.image.is_some() => Boot::Volume {
            volume: args
                .boot_volume
                .clone()
                .unwrap_or_else(|| args.name.clone()),
        },
        (Some(kernel), _) => Boot::Kernel {
            kernel: absolute(cwd, kernel),
            initrd: args.initrd.as_deref().map(|p| absolute(cwd, p)),
            cmdline: args.cmdline.clone(),
        },
        (None, Some(disk)) => Boot::disk(absolute(cwd, disk)),
        // clap's `boot` group requires one of them.
        (None, None) => return Err(CliError::Usage("give --kernel or --disk".into())),
    };
    let mut spec = VmSpec::builder(boot).introspection(args.introspection);
    if let Some(cpus) = args.cpus {
        spec = spec.cpus(cpus);
    }
    if let Some(memory) = args.memory {
        spec = spec.memory(memory);
    }
    if let Some(arch) = args.arch {
        spec = spec.arch(arch);
    }
    if let Some(machine) = args.machine {
        spec = spec.machine(machine);
    }
    if let Some(accel) = args.accel {
        spec = spec.accel(accel);
    }
    if let Some(policy) = args.restart_policy {
        spec = spec.restart_policy(policy);
    }
    if args.no_start {
        spec = spec.power(Power::Stopped);
    }
    for attachment in &args.volumes {
        spec = spec.volume(attachment.clone());
    }
    let spec = spec.build().map_err(flag_error)?;
    let mut vm = Vm::new(args.name.clone(), spec);
    vm.metadata.labels.extend(args.labels.iter().cloned());
    if let Some(ttl) = args.ttl {
        expire_after(&mut vm, ttl);
    }
    vm.metadata.validate().map_err(flag_error)?;
    Ok(vm)
}

/// Has corrald delete `vm` `ttl` from now (the `corral.dev/expires-at` annotation).
pub fn expire_after(vm: &mut Vm, ttl: std::time::Duration) {
    let at = std::time::SystemTime::now() + ttl;
    vm.metadata.annotations.insert(
        EXPIRES_AT.to_owned(),
        humantime::format_rfc3339_seconds(at).to_string(),
    );
}

/// Clones `image` into a volume named like `vm` that the VM boots and owns: the daemon deletes
/// it with the VM.
pub async fn owned_volume(
    client: &corral_client::Client,
    vm: &Vm,
    image: &ResourceName,
    size: Option<ByteSize>,
) -> Result<(), CliError> {
    let mut meta = ObjectMeta::new(vm.metadata.name.clone());
    meta.annotations
        .insert(OWNER_VM.to_owned(), vm.metadata.uid.clone());
    let volume = Volume {
        metadata: meta,
        spec: VolumeSpec {
            kind: Default::default(),
            format: None,
            image: Some(image.clone()),
            pool: None,
            size,
        },
        status: Default::default(),
    };
    client.create_volume(&volume).await?;
    Ok(())
}

/// `path` made absolute from `cwd`, without `.` components. Symlinks and `..` are left as
/// they are: the daemon opens the path as given.
pub fn absolute(cwd: &Path, path: &Path) -> PathBuf {
    cwd.join(path).components().collect()
}

/// Puts the flag that set a field in front of a validation error.
fn flag_error(err: ValidationError) -> CliError {
    let flag = match err.field.as_str() {
        "spec.cpus" => "--cpus",
        "spec.memory" => "--memory",
        "spec.machine" => "--machine",
        "spec.arch" => "--arch",
        "spec.accel" => "--accel",
        "spec.restart_policy" => "--restart",
        "spec.boot.kernel.kernel" => "--kernel",
        "spec.boot.kernel.initrd" => "--initrd",
        "spec.boot.kernel.cmdline" => "--cmdline",
        "spec.boot.disk.path" => "--disk",
        f if f.starts_with("spec.volumes") => "--volume",
        "metadata.labels" => "--label",
        "metadata.name" => "NAME",
        _ => return CliError::Failed(err.to_string()),
    };
    CliError::Failed(format!("{flag}: {err}"))
}

/// Checks that the files a VM boots exist here, for a daemon on this host: a typo is
/// reported before anything is created (`--kernel /x: no such file`).
pub fn check_boot_files(vm: &Vm) -> Result<(), CliError> {
    let files: Vec<(&str, &Path)> = match &vm.spec.boot {
        Boot::Kernel { kernel, initrd, .. } => std::iter::once(("--kernel", kernel.as_path()))
            .chain(initrd.as_deref().map(|p| ("--initrd", p)))
            .collect(),
        Boot::Disk { path, .. } => vec![("--disk", path.as_path())],
        Boot::Volume { .. } => Vec::new(),
    };
    for (flag, path) in files {
        let problem = match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => "is a directory, not a file".to_owned(),
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::NotFound => "no such file".to_owned(),
            Err(e) => e.to_string(),
        };
        return Err(CliError::Failed(format!(
            "{flag} {}: {problem}",
            path.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{Cli, Command, VmCommand};
    use clap::Parser;
    use corral_contract::{Arch, ByteSize, Machine, RestartPolicy};

    fn create_args(args: &[&str]) -> CreateArgs {
        let argv = ["corral", "vm", "create"]
            .into_iter()
            .chain(args.iter().copied());
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Vm(VmCommand::Create(args)) => args,
            other => panic!("parsed as {other:?}"),
        }
    }

    fn build(args: &[&str]) -> Result<Vm, String> {
        vm_from_flags(&create_args(args), Path::new("/home/u/vms")).map_err(|e| e.to_string())
    }

    #[test]
    fn flags_fill_the_spec_and_defaults_stay() {
        let vm = build(&[
            "web-1",
            "--kernel",
            "/k/vmlinuz",
            "--initrd",
            "initrd.img",
            "--cmdline",
            "console=ttyS0 quiet",
            "--cpus",
            "2",
            "--memory",
            "1G",
            "--machine",
            "microvm",
            "--restart",
            "on-failure",
            "--introspection",
            "--label",
            "tier=web",
            "-l",
            "env=dev",
        ])
        .unwrap();
        assert_eq!(vm.metadata.name, "web-1");
        assert_eq!(vm.spec.cpus, 2);
        assert_eq!(vm.spec.memory, ByteSize::from_gib(1));
        assert_eq!(vm.spec.machine(), Machine::Microvm);
        assert_eq!(vm.spec.restart_policy, RestartPolicy::OnFailure);
        assert_eq!(vm.spec.power, Power::Running);
        assert!(vm.spec.introspection);
        assert_eq!(
            vm.spec.boot,
            Boot::Kernel {
                kernel: "/k/vmlinuz".into(),
                initrd: Some("/home/u/vms/initrd.img".into()),
                cmdline: Some("console=ttyS0 quiet".into()),
            }
        );
        assert_eq!(vm.metadata.labels["tier"], "web");
        assert_eq!(vm.metadata.labels["env"], "dev");

        let vm = build(&["db", "--disk", "./disks/../db.qcow2", "--no-start"]).unwrap();
        assert_eq!(vm.spec.boot, Boot::disk("/home/u/vms/disks/../db.qcow2"));
        assert_eq!(vm.spec.power, Power::Stopped);
        assert_eq!(vm.spec.cpus, VmSpec::DEFAULT_CPUS);
        assert_eq!(vm.spec.memory, VmSpec::DEFAULT_MEMORY);
        assert_eq!(vm.spec.arch, Arch::X86_64);
    }

    #[test]
    fn relative_paths_are_made_absolute_from_the_working_directory() {
        let cwd = Path::new("/srv/corral");
        assert_eq!(
            absolute(cwd, Path::new("vmlinuz")),
            Path::new("/srv/corral/vmlinuz")
        );
        assert_eq!(
            absolute(cwd, Path::new("./a/./b")),
            Path::new("/srv/corral/a/b")
        );
        assert_eq!(
            absolute(cwd, Path::new("../k")),
            Path::new("/srv/corral/../k")
        );
        assert_eq!(absolute(cwd, Path::new("/abs/k")), Path::new("/abs/k"));
    }

    #[test]
    fn spec_errors_name_the_flag_and_the_field() {
        let err = build(&["a", "--kernel", "k", "--machine", "virt"]).unwrap_err();
        assert!(
            err.starts_with("--machine: spec.machine: virt is not available on x86_64"),
            "{err}"
        );
        let err = build(&["a", "--kernel", "k", "--label", "bad key=x"]).unwrap_err();
        assert!(
            err.starts_with("--label: metadata.labels: label key \"bad key\""),
            "{err}"
        );
        let err = build(&["a", "--kernel", "k", "--cmdline", "a\nb"]).unwrap_err();
        assert!(
            err.starts_with("--cmdline: spec.boot.kernel.cmdline: must be a single line"),
            "{err}"
        );
        assert!(build(&["a", "--kernel", "k", "--arch", "aarch64"]).is_ok());
    }

    #[test]
    fn boot_files_must_exist_here() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinuz");
        std::fs::write(&kernel, b"kernel").unwrap();
        let cwd = dir.path();
        let ok = vm_from_flags(&create_args(&["a", "--kernel", "vmlinuz"]), cwd).unwrap();
        check_boot_files(&ok).unwrap();

        let missing = vm_from_flags(&create_args(&["a", "--kernel", "/x"]), cwd).unwrap();
        assert_eq!(
            check_boot_files(&missing).unwrap_err().to_string(),
            "--kernel /x: no such file"
        );

        let args = create_args(&["a", "--kernel", "vmlinuz", "--initrd", "nope.img"]);
        let no_initrd = vm_from_flags(&args, cwd).unwrap();
        let err = check_boot_files(&no_initrd).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("--initrd {}: no such file", cwd.join("nope.img").display())
        );

        let dir_disk = vm_from_flags(&create_args(&["a", "--disk", "."]), cwd).unwrap();
        let err = check_boot_files(&dir_disk).unwrap_err().to_string();
        assert!(err.ends_with("is a directory, not a file"), "{err}");
    }
}
