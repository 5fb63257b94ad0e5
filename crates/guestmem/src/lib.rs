//! Live, read-only, zero-copy access to a running guest's RAM.
//!
//! A VM started with introspection keeps its RAM in a shared file
//! (`-object memory-backend-file,share=on`). [`GuestRam`] maps that file read-only and
//! addresses it by guest-physical address through a [`MemoryLayout`], which comes from QMP
//! ([`open_discovered`], [`discover`], [`discover_layout`]) or from QEMU's fixed rules
//! ([`MemoryLayout::x86_q35`], [`MemoryLayout::aarch64_virt`]).
//!
//! ```
//! use corral_guestmem::{GuestRam, MemoryLayout};
//! # let file = tempfile::NamedTempFile::new().unwrap();
//! # std::fs::write(file.path(), b"....corral....").unwrap();
//! let ram = GuestRam::open(file.path(), MemoryLayout::flat(14))?;
//! let hits = ram.find(b"corral");
//! assert_eq!(hits, [4]);
//! assert_eq!(ram.read_physical(hits[0], 6)?, b"corral");
//! # Ok::<(), corral_guestmem::Error>(())
//! ```
#![deny(missing_docs)]

mod error;
mod hilbert;
mod layout;
mod qmp;
mod ram;

pub use error::Error;
pub use hilbert::{HilbertStream, MAX_SAMPLES, hilbert_d2xy, hilbert_frame, to_png};
pub use layout::{MemoryLayout, Region};
pub use qmp::{RamBackend, discover, discover_layout, open_discovered};
pub use ram::{ConsistentChunk, ConsistentChunks, ConsistentSnapshot, GuestRam, PAGE_SIZE};
