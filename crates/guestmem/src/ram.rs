use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapOptions};
use xxhash_rust::xxh3::xxh3_64;

use crate::{Error, MemoryLayout};

/// Page size used for torn-page detection.
pub const PAGE_SIZE: usize = 4096;
/// Bytes copied between the "before" and "after" checksums of a consistent snapshot, so a
/// chunk is still in cache when it is hashed again.
const CHUNK: usize = 64 * PAGE_SIZE;

/// A read-only, shared mapping of a guest's RAM file, addressed by guest-physical address.
///
/// The guest keeps running while it is read: bytes returned may change at any moment, and
/// a multi-byte read is not atomic with respect to the guest. Each handle maps exactly one
/// file, so it can only ever reach the RAM of the VM that file belongs to.
#[derive(Debug)]
pub struct GuestRam {
    path: PathBuf,
    layout: MemoryLayout,
    map: Mmap,
}

/// A snapshot taken while the guest ran, with the pages that changed during the copy.
#[derive(Debug, Clone)]
pub struct ConsistentSnapshot {
    /// RAM in layout order (regions concatenated by guest-physical address).
    pub data: Vec<u8>,
    /// Guest-physical addresses of pages that were still changing after the last re-read:
    /// their copy may mix old and new bytes.
    pub torn_pages: Vec<u64>,
    /// Page re-reads done to repair pages that changed during the copy.
    pub reread_pages: u64,
}

impl GuestRam {
    /// Maps the memory file at `path` read-only, with `layout` placing it in guest-physical
    /// space.
    pub fn open(path: impl AsRef<Path>, layout: MemoryLayout) -> Result<Self, Error> {
        use std::os::unix::fs::MetadataExt;
        let path = path.as_ref().to_owned();
        let open_error = |source: std::io::Error| match source.kind() {
            ErrorKind::NotFound => Error::NotFound { path: path.clone() },
            ErrorKind::PermissionDenied => Error::PermissionDenied { path: path.clone() },
            _ => Error::Open {
                path: path.clone(),
                source,
            },
        };
        // The file may belong to the unprivileged user QEMU runs as, who could put a symlink
        // to a host file in its place: only the regular file found at `path` is mapped.
        let before = std::fs::symlink_metadata(&path).map_err(open_error)?;
        let file = File::open(&path).map_err(open_error)?;
        let meta = file.metadata().map_err(|source| Error::Open {
            path: path.clone(),
            source,
        })?;
        if !before.file_type().is_file() || (before.dev(), before.ino()) != (meta.dev(), meta.ino())
        {
            return Err(Error::Open {
                path: path.clone(),
                source: std::io::Error::new(
                    ErrorKind::InvalidInput,
                    "not a regular file (a symlink or a device is never mapped)",
                ),
            });
        }
        let size = meta.len();
        let needed = layout.file_len_needed();
        if size < needed || needed == 0 {
            return Err(Error::FileTooSmall { path, size, needed });
        }
        let len = usize::try_from(needed).map_err(|_| Error::FileTooSmall {
            path: path.clone(),
            size,
            needed,
        })?;
        // SAFETY: the mapping is read-only and shared with QEMU, which may write any byte at
        // any time; we only ever hand out `&[u8]` views and copy from them, never assume the
        // bytes are stable, and document that to callers. The file is created by QEMU at the
        // full RAM size and never truncated while it runs, and the length checked above lies
        // within it, so no access faults.
        let map =
            unsafe { MmapOptions::new().len(len).map(&file) }.map_err(|source| Error::Mmap {
                path: path.clone(),
                source,
            })?;
        Ok(GuestRam { path, layout, map })
    }

    /// The memory file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The guest-physical layout.
    pub fn layout(&self) -> &MemoryLayout {
        &self.layout
    }

    /// Total bytes of RAM (the size of a snapshot).
    pub fn len(&self) -> u64 {
        self.layout.total_len()
    }

    /// Whether the layout has no RAM at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `len` bytes at guest-physical `addr`, without copying. The range must lie inside one
    /// RAM region.
    pub fn read_physical(&self, addr: u64, len: u64) -> Result<&[u8], Error> {
        let off = self.layout.translate(addr, len)? as usize;
        Ok(&self.map[off..off + len as usize])
    }

    /// Each region's bytes with its guest-physical base, in address order.
    pub fn regions(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.layout.regions().iter().map(|r| {
            let off = r.file_offset as usize;
            (r.guest_phys_base, &self.map[off..off + r.len as usize])
        })
    }

    /// Guest-physical addresses of every occurrence of `pattern`, ascending. Matches
    /// spanning two regions are not found (the regions are not adjacent in the guest).
    pub fn find(&self, pattern: &[u8]) -> Vec<u64> {
        self.find_iter(pattern).collect()
    }

    /// [`GuestRam::find`] as an iterator that scans only as far as it is driven: taking the
    /// first few matches of a common pattern (`00` on a zeroed guest) reads a few bytes, not
    /// all of RAM, and holds no list of every match.
    pub fn find_iter<'a>(&'a self, pattern: &'a [u8]) -> impl Iterator<Item = u64> + 'a {
        // An empty pattern "matches" everywhere; it finds nothing here.
        let regions = self.regions().filter(move |_| !pattern.is_empty());
        regions.flat_map(move |(base, bytes)| {
            memchr::memmem::find_iter(bytes, pattern).map(move |i| base + i as u64)
        })
    }

    /// A copy of all RAM in layout order, taken while the guest runs (pages may be torn).
    pub fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.snapshot_into(&mut out);
        out
    }

    /// A buffer of [`GuestRam::len`] bytes with every page already faulted in, for
    /// [`GuestRam::snapshot_into`] when the copy must be quick (the guest paused): faulting
    /// in a fresh buffer costs several times the copy itself.
    #[allow(clippy::slow_vector_initialization)] // `vec![0; n]` is calloc: lazy zero pages
    pub fn snapshot_buffer(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.resize(self.len() as usize, 0u8);
        out
    }

    /// [`GuestRam::snapshot`] into `out` (cleared first), reusing its memory: repeated
    /// snapshots then cost a copy each, without faulting in a fresh buffer every time.
    pub fn snapshot_into(&self, out: &mut Vec<u8>) {
        out.clear();
        out.reserve(self.len() as usize);
        for (_, bytes) in self.regions() {
            out.extend_from_slice(bytes);
        }
    }

    /// A copy of all RAM in layout order in which every page is checked: pages whose
    /// checksum changed during the copy are re-read, each up to `max_rereads` times, until a
    /// copy sits between two equal checksums; pages that never settle are reported.
    pub fn snapshot_consistent(&self, max_rereads: u32) -> ConsistentSnapshot {
        let mut snapshot = ConsistentSnapshot {
            data: Vec::with_capacity(self.len() as usize),
            torn_pages: Vec::new(),
            reread_pages: 0,
        };
        for chunk in self.consistent_chunks(CHUNK, max_rereads) {
            snapshot.data.extend_from_slice(&chunk.data);
            snapshot.torn_pages.extend(chunk.torn_pages);
            snapshot.reread_pages += chunk.reread_pages;
        }
        snapshot
    }

    /// [`GuestRam::snapshot_consistent`] piece by piece: copies of at most `chunk` bytes (a
    /// region's end cuts a piece short) in layout order, each checked and repaired page by
    /// page before it is handed out, so a snapshot can be streamed while holding one piece.
    pub fn consistent_chunks(&self, chunk: usize, max_rereads: u32) -> ConsistentChunks<'_> {
        ConsistentChunks {
            ram: self,
            region: 0,
            offset: 0,
            chunk: chunk.max(PAGE_SIZE),
            max_rereads,
        }
    }

    /// Copies `src` (guest-physical `gpa` on) into `out` between page checksums, re-reading
    /// pages that changed; returns the pages that never settled and the re-reads done.
    fn copy_checked(
        &self,
        gpa: u64,
        src: &[u8],
        out: &mut Vec<u8>,
        max_rereads: u32,
    ) -> (Vec<u64>, u64) {
        let mut torn = Vec::new();
        let mut rereads = 0;
        let mut before = Vec::with_capacity(CHUNK / PAGE_SIZE);
        for (c, part) in src.chunks(CHUNK).enumerate() {
            before.clear();
            before.extend(part.chunks(PAGE_SIZE).map(xxh3_64));
            let start = out.len();
            out.extend_from_slice(part);
            for (p, page) in part.chunks(PAGE_SIZE).enumerate() {
                if xxh3_64(page) == before[p] {
                    continue;
                }
                let at = start + p * PAGE_SIZE;
                let mut settled = false;
                for _ in 0..max_rereads {
                    rereads += 1;
                    let h = xxh3_64(page);
                    out[at..at + page.len()].copy_from_slice(page);
                    if xxh3_64(page) == h {
                        settled = true;
                        break;
                    }
                }
                if !settled {
                    torn.push(gpa + (c * CHUNK + p * PAGE_SIZE) as u64);
                }
            }
        }
        (torn, rereads)
    }
}

/// One piece of a consistent snapshot: [`GuestRam::consistent_chunks`].
#[derive(Debug, Clone)]
pub struct ConsistentChunk {
    /// Guest-physical address of `data[0]`.
    pub addr: u64,
    /// The bytes.
    pub data: Vec<u8>,
    /// Pages of this piece that were still changing after the last re-read.
    pub torn_pages: Vec<u64>,
    /// Page re-reads done for this piece.
    pub reread_pages: u64,
}

/// The pieces of a consistent snapshot, copied one at a time as they are asked for.
#[derive(Debug)]
pub struct ConsistentChunks<'a> {
    ram: &'a GuestRam,
    region: usize,
    offset: u64,
    chunk: usize,
    max_rereads: u32,
}

impl Iterator for ConsistentChunks<'_> {
    type Item = ConsistentChunk;

    fn next(&mut self) -> Option<ConsistentChunk> {
        loop {
            let region = self.ram.layout.regions().get(self.region)?;
            if self.offset >= region.len {
                self.region += 1;
                self.offset = 0;
                continue;
            }
            let len = (region.len - self.offset).min(self.chunk as u64) as usize;
            let at = (region.file_offset + self.offset) as usize;
            let addr = region.guest_phys_base + self.offset;
            self.offset += len as u64;
            let src = &self.ram.map[at..at + len];
            let mut data = Vec::with_capacity(len);
            let (torn_pages, reread_pages) =
                self.ram
                    .copy_checked(addr, src, &mut data, self.max_rereads);
            return Some(ConsistentChunk {
                addr,
                data,
                torn_pages,
                reread_pages,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::Region;

    fn file_with(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f.flush().unwrap();
        f
    }

    #[test]
    fn reads_find_and_snapshot_follow_the_layout() {
        let mut bytes = vec![0u8; 4 * PAGE_SIZE];
        bytes[100..105].copy_from_slice(b"hello");
        bytes[3 * PAGE_SIZE + 7..3 * PAGE_SIZE + 12].copy_from_slice(b"hello");
        let f = file_with(&bytes);
        let layout = MemoryLayout::new(vec![
            Region {
                guest_phys_base: 0,
                file_offset: 0,
                len: 2 * PAGE_SIZE as u64,
            },
            Region {
                guest_phys_base: 0x10_0000,
                file_offset: 2 * PAGE_SIZE as u64,
                len: 2 * PAGE_SIZE as u64,
            },
        ])
        .unwrap();
        let ram = GuestRam::open(f.path(), layout).unwrap();
        let hits = ram.find(b"hello");
        assert_eq!(hits, vec![100, 0x10_0000 + PAGE_SIZE as u64 + 7]);
        for h in hits {
            assert_eq!(ram.read_physical(h, 5).unwrap(), b"hello");
        }
        assert!(matches!(
            ram.read_physical(PAGE_SIZE as u64, PAGE_SIZE as u64 + 1),
            Err(Error::CrossesHole { .. })
        ));
        assert!(matches!(
            ram.read_physical(0x10_2000, 1),
            Err(Error::InvalidAddress { max: 0x10_2000, .. })
        ));
        assert_eq!(ram.snapshot(), bytes);
        let mut reused = vec![7u8; 3];
        ram.snapshot_into(&mut reused);
        assert_eq!(reused, bytes);
        let c = ram.snapshot_consistent(3);
        assert_eq!(c.data, bytes);
        assert!(c.torn_pages.is_empty());
        assert_eq!(c.reread_pages, 0);
    }

    #[test]
    fn consistent_chunks_cut_at_region_ends_and_add_up_to_the_snapshot() {
        let bytes: Vec<u8> = (0..5 * PAGE_SIZE).map(|i| (i / 7) as u8).collect();
        let f = file_with(&bytes);
        let layout = MemoryLayout::new(vec![
            Region {
                guest_phys_base: 0,
                file_offset: 0,
                len: 3 * PAGE_SIZE as u64,
            },
            Region {
                guest_phys_base: 0x10_0000,
                file_offset: 3 * PAGE_SIZE as u64,
                len: 2 * PAGE_SIZE as u64,
            },
        ])
        .unwrap();
        let ram = GuestRam::open(f.path(), layout).unwrap();
        let chunks: Vec<ConsistentChunk> = ram.consistent_chunks(2 * PAGE_SIZE, 2).collect();
        let shape: Vec<(u64, usize)> = chunks.iter().map(|c| (c.addr, c.data.len())).collect();
        let page = PAGE_SIZE;
        assert_eq!(
            shape,
            [
                (0, 2 * page),
                (2 * page as u64, page),
                (0x10_0000, 2 * page)
            ]
        );
        let joined: Vec<u8> = chunks.iter().flat_map(|c| c.data.clone()).collect();
        assert_eq!(joined, bytes);
        assert!(
            chunks
                .iter()
                .all(|c| c.torn_pages.is_empty() && c.reread_pages == 0)
        );
    }

    #[test]
    fn find_iter_scans_only_as_far_as_it_is_driven() {
        let f = file_with(&vec![0u8; 64 * PAGE_SIZE]);
        let ram = GuestRam::open(f.path(), MemoryLayout::flat(64 * PAGE_SIZE as u64)).unwrap();
        let first: Vec<u64> = ram.find_iter(&[0, 0]).take(3).collect();
        assert_eq!(first, [0, 2, 4]);
        assert_eq!(ram.find_iter(b"").next(), None);
        assert_eq!(ram.find(b"\x01"), Vec::<u64>::new());
    }

    #[test]
    fn open_reports_typed_errors() {
        assert!(matches!(
            GuestRam::open("/nonexistent/corral", MemoryLayout::flat(4096)),
            Err(Error::NotFound { .. })
        ));
        let f = file_with(&[0; 4096]);
        assert!(matches!(
            GuestRam::open(f.path(), MemoryLayout::flat(8192)),
            Err(Error::FileTooSmall {
                size: 4096,
                needed: 8192,
                ..
            })
        ));
    }

    #[test]
    fn a_symlink_in_place_of_the_ram_file_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, [7u8; 4096]).unwrap();
        let link = dir.path().join("corral-u1");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        let err = GuestRam::open(&link, MemoryLayout::flat(4096)).unwrap_err();
        assert!(matches!(err, Error::Open { .. }), "{err}");
        assert!(err.to_string().contains("corral-u1"), "{err}");
    }
}
