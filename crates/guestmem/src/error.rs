use std::path::PathBuf;

/// What can go wrong opening, reading or discovering guest RAM.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The memory file does not exist (the VM is not running, or was started without
    /// introspection).
    #[error("guest memory file {path} not found: is the VM running with introspection enabled?")]
    NotFound {
        /// The file that was opened.
        path: PathBuf,
    },
    /// The memory file exists but this process may not read it.
    #[error("permission denied reading guest memory file {path}: run as the VM's owner")]
    PermissionDenied {
        /// The file that was opened.
        path: PathBuf,
    },
    /// Opening or inspecting the memory file failed for another reason.
    #[error("cannot open guest memory file {path}")]
    Open {
        /// The file that was opened.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The RAM backend is private to QEMU (`share=off`), so the file does not show guest RAM.
    #[error("memory backend {id} is not shared (share=off): start the VM with introspection")]
    NotShared {
        /// The backend's QOM id.
        id: String,
    },
    /// QEMU has no file-backed RAM backend to read.
    #[error("the VM has no memory-backend-file: start it with introspection")]
    NoFileBackend,
    /// Mapping the memory file failed.
    #[error("cannot map guest memory file {path}")]
    Mmap {
        /// The file that was mapped.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The layout refers to bytes past the end of the memory file.
    #[error("guest memory file {path} has {size} bytes but the layout needs {needed}")]
    FileTooSmall {
        /// The file that was mapped.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The size the layout needs.
        needed: u64,
    },
    /// The layout's regions overlap in guest-physical or file space, or one is empty.
    #[error("invalid memory layout: {reason}")]
    InvalidLayout {
        /// What is wrong.
        reason: String,
    },
    /// The range ends past the highest guest-physical address backed by RAM.
    #[error(
        "guest-physical range {addr:#x}+{len:#x} is outside guest RAM (which ends at {max:#x})"
    )]
    InvalidAddress {
        /// First guest-physical address of the range.
        addr: u64,
        /// Length of the range.
        len: u64,
        /// The end (exclusive) of the highest RAM region.
        max: u64,
    },
    /// The range touches a gap between RAM regions (such as the x86 PCI hole).
    #[error("guest-physical range {addr:#x}+{len:#x} crosses a hole in the memory map")]
    CrossesHole {
        /// First guest-physical address of the range.
        addr: u64,
        /// Length of the range.
        len: u64,
    },
    /// A QMP command failed.
    #[error("QMP {command} failed")]
    Qmp {
        /// The command, with its main argument.
        command: String,
        /// The underlying error.
        #[source]
        source: corral_qmp::Error,
    },
    /// A QOM property had an unexpected value.
    #[error("QOM property {property} of {object} has an unexpected value {value}")]
    BadProperty {
        /// The QOM path of the object.
        object: String,
        /// The property name.
        property: String,
        /// The value QEMU returned.
        value: String,
    },
    /// Encoding a PNG failed.
    #[error("cannot encode PNG")]
    Png {
        /// The underlying error.
        #[source]
        source: png::EncodingError,
    },
}
