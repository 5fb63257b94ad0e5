use std::path::PathBuf;

/// Where a running VM's RAM is shared with the host, and how guest-physical addresses map into
/// that file: what a node needs to read a guest's memory without the emulator's help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestRamMap {
    /// The file holding the guest's RAM (mapped shared by the emulator).
    pub path: PathBuf,
    /// Stretches of guest-physical address space backed by the file, in address order.
    pub regions: Vec<RamRegion>,
}

/// One stretch of guest RAM inside a [`GuestRamMap`]'s file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRegion {
    /// First guest-physical address.
    pub guest_phys_base: u64,
    /// Offset of that address in the file.
    pub file_offset: u64,
    /// Length in bytes.
    pub len: u64,
}
