//! A typed QEMU command line: arguments are a vector handed to `execve`, never a shell string,
//! and every value that lands inside a `key=value,…` option list is escaped.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// Escapes a value for a QEMU option list: QEMU's parser ends a value at a single comma and
/// reads a doubled comma as a literal one, so doubling every comma makes any byte string a
/// single value. This is the only escaping QEMU's option syntax has.
pub fn escape_value(value: &OsStr) -> OsString {
    let mut out = Vec::with_capacity(value.len());
    for &b in value.as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

/// One option list such as `socket,id=qmp,path=/run/x.sock,server=on`.
#[derive(Debug, Clone)]
pub struct OptList(OsString);

impl OptList {
    /// Starts a list with a bare first element (a driver or machine type). It is escaped too.
    pub fn new(head: impl AsRef<OsStr>) -> Self {
        OptList(escape_value(head.as_ref()))
    }

    /// Starts a list whose first element is already a `key=value` pair.
    pub fn with(key: &str, value: impl AsRef<OsStr>) -> Self {
        let mut list = OptList(OsString::from(key));
        list.0.push("=");
        list.0.push(escape_value(value.as_ref()));
        list
    }

    /// Appends `,key=value` with the value escaped. Keys are ours, never a user's.
    pub fn set(mut self, key: &str, value: impl AsRef<OsStr>) -> Self {
        debug_assert!(
            key.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        );
        self.0.push(",");
        self.0.push(key);
        self.0.push("=");
        self.0.push(escape_value(value.as_ref()));
        self
    }

    /// Appends `,key=on` or `,key=off`.
    pub fn flag(self, key: &str, on: bool) -> Self {
        self.set(key, if on { "on" } else { "off" })
    }

    fn into_os_string(self) -> OsString {
        self.0
    }
}

/// An emulator binary and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuCommand {
    binary: PathBuf,
    args: Vec<OsString>,
    inherit: Vec<std::os::fd::RawFd>,
}

impl QemuCommand {
    /// A command line for `binary` with no arguments yet.
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        QemuCommand {
            binary: binary.into(),
            args: Vec::new(),
            inherit: Vec::new(),
        }
    }

    /// Appends a bare argument such as `-nodefaults`.
    pub fn arg(&mut self, arg: impl Into<OsString>) -> &mut Self {
        self.args.push(arg.into());
        self
    }

    /// Appends a flag whose value is taken verbatim by QEMU (`-kernel`, `-append`, `-pidfile`:
    /// QEMU stores these strings as they are, so they need no escaping).
    pub fn raw(&mut self, flag: &str, value: impl Into<OsString>) -> &mut Self {
        self.args.push(flag.into());
        self.args.push(value.into());
        self
    }

    /// Appends a flag followed by an option list.
    pub fn opts(&mut self, flag: &str, list: OptList) -> &mut Self {
        self.args.push(flag.into());
        self.args.push(list.into_os_string());
        self
    }

    /// Lets the process inherit these open descriptors (named as `/dev/fd/N` in arguments);
    /// every other descriptor of ours stays closed to it.
    pub fn inherit(&mut self, fds: &[std::os::fd::RawFd]) -> &mut Self {
        self.inherit.extend_from_slice(fds);
        self
    }

    /// The descriptors the process inherits.
    pub fn inherited(&self) -> &[std::os::fd::RawFd] {
        &self.inherit
    }

    /// The emulator binary.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// The arguments, without the binary.
    pub fn args(&self) -> &[OsString] {
        &self.args
    }

    /// `argv` as the kernel sees it: binary first.
    pub fn argv(&self) -> Vec<OsString> {
        std::iter::once(self.binary.clone().into_os_string())
            .chain(self.args.iter().cloned())
            .collect()
    }

    /// The command line as a shell-quoted string, for logs and for reproducing by hand.
    pub fn display(&self) -> String {
        self.argv()
            .iter()
            .map(|a| shell_quote(&a.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@+".contains(&b))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commas_are_doubled_so_a_value_cannot_add_an_option() {
        let list = OptList::new("file").set("filename", "/tmp/a,readonly=off,b");
        assert_eq!(
            list.into_os_string(),
            "file,filename=/tmp/a,,readonly=off,,b"
        );
    }

    #[test]
    fn head_is_escaped_too() {
        assert_eq!(
            OptList::new("q35,accel=kvm").into_os_string(),
            "q35,,accel=kvm"
        );
    }

    #[test]
    fn non_utf8_bytes_survive() {
        let value = OsStr::from_bytes(b"/tmp/\xff,x");
        let escaped = escape_value(value);
        assert_eq!(escaped.as_bytes(), b"/tmp/\xff,,x");
    }

    #[test]
    fn display_quotes_what_a_shell_would_split() {
        let mut cmd = QemuCommand::new("qemu-system-x86_64");
        cmd.raw("-append", "console=ttyS0 quiet").arg("-S");
        assert_eq!(
            cmd.display(),
            "qemu-system-x86_64 -append 'console=ttyS0 quiet' -S"
        );
    }
}
