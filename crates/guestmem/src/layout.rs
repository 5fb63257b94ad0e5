use crate::Error;

/// One contiguous run of guest RAM: `len` bytes at guest-physical `guest_phys_base`, stored
/// at `file_offset` in the memory file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// First guest-physical address.
    pub guest_phys_base: u64,
    /// Offset of that address's byte in the memory file.
    pub file_offset: u64,
    /// Length in bytes.
    pub len: u64,
}

impl Region {
    /// One past the last guest-physical address.
    pub fn guest_phys_end(&self) -> u64 {
        self.guest_phys_base + self.len
    }
}

const GIB: u64 = 1 << 30;
const FOUR_GIB: u64 = 4 * GIB;

/// Where guest RAM sits in guest-physical space and in the memory file: sorted,
/// non-overlapping regions. Adjacent regions contiguous in both spaces are merged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLayout {
    regions: Vec<Region>,
}

impl MemoryLayout {
    /// A layout from explicit regions, in any order.
    pub fn new(mut regions: Vec<Region>) -> Result<Self, Error> {
        if regions.iter().any(|r| r.len == 0) {
            return Err(invalid("a region is empty"));
        }
        for r in &regions {
            if r.guest_phys_base.checked_add(r.len).is_none()
                || r.file_offset.checked_add(r.len).is_none()
            {
                return Err(invalid(format!("region {r:?} overflows 64 bits")));
            }
        }
        regions.sort_by_key(|r| r.guest_phys_base);
        let mut merged: Vec<Region> = Vec::with_capacity(regions.len());
        for r in regions {
            if let Some(last) = merged.last_mut() {
                if r.guest_phys_base < last.guest_phys_end() {
                    return Err(invalid(format!(
                        "regions at {:#x} and {:#x} overlap in guest-physical space",
                        last.guest_phys_base, r.guest_phys_base
                    )));
                }
                if r.guest_phys_base == last.guest_phys_end()
                    && r.file_offset == last.file_offset + last.len
                {
                    last.len += r.len;
                    continue;
                }
            }
            merged.push(r);
        }
        let mut by_file = merged.clone();
        by_file.sort_by_key(|r| r.file_offset);
        for w in by_file.windows(2) {
            if w[1].file_offset < w[0].file_offset + w[0].len {
                return Err(invalid(format!(
                    "regions at {:#x} and {:#x} overlap in the memory file",
                    w[0].guest_phys_base, w[1].guest_phys_base
                )));
            }
        }
        Ok(MemoryLayout { regions: merged })
    }

    /// `size` bytes at guest-physical 0, file offset 0.
    pub fn flat(size: u64) -> Self {
        Self::at(0, size)
    }

    /// QEMU's q35 machine: RAM below 4 GiB up to 0xb000_0000 (2.75 GiB), or 2 GiB if RAM is
    /// at least 2.75 GiB; the rest at 4 GiB (`pc_q35_init`, default `max-ram-below-4g`).
    pub fn x86_q35(ram_size: u64) -> Self {
        let lowmem = if ram_size >= 0xb000_0000 {
            0x8000_0000
        } else {
            0xb000_0000
        };
        Self::x86_split(ram_size, lowmem)
    }

    /// QEMU's pc (i440fx) machine: RAM below 4 GiB up to 0xe000_0000 (3.5 GiB), or 3 GiB if
    /// RAM is at least 3.5 GiB (gigabyte alignment of current machine types); the rest at
    /// 4 GiB (`pc_init1`).
    pub fn x86_pc(ram_size: u64) -> Self {
        let lowmem = if ram_size >= 0xe000_0000 {
            0xc000_0000
        } else {
            0xe000_0000
        };
        Self::x86_split(ram_size, lowmem)
    }

    /// QEMU's aarch64 virt machine: all RAM at 1 GiB.
    pub fn aarch64_virt(ram_size: u64) -> Self {
        Self::at(GIB, ram_size)
    }

    fn at(base: u64, size: u64) -> Self {
        let regions = (size > 0)
            .then_some(Region {
                guest_phys_base: base,
                file_offset: 0,
                len: size,
            })
            .into_iter()
            .collect();
        MemoryLayout { regions }
    }

    fn x86_split(ram_size: u64, lowmem: u64) -> Self {
        let below = ram_size.min(lowmem);
        let mut regions = Vec::new();
        if below > 0 {
            regions.push(Region {
                guest_phys_base: 0,
                file_offset: 0,
                len: below,
            });
        }
        if ram_size > below {
            regions.push(Region {
                guest_phys_base: FOUR_GIB,
                file_offset: below,
                len: ram_size - below,
            });
        }
        MemoryLayout { regions }
    }

    /// The layout of backend `backend_id`'s RAM in the output of HMP `info mtree -f`
    /// (the flattened `memory` address space), or `None` if it shows none.
    pub fn from_mtree(mtree: &str, backend_id: &str) -> Option<Self> {
        let mut regions = Vec::new();
        // Each flat view lists the address spaces that share it; RAM is in `memory`'s.
        let mut in_memory = false;
        for line in mtree.lines() {
            let line = line.trim();
            if line.starts_with("FlatView") {
                in_memory = false;
            } else if line.starts_with("AS ") {
                in_memory |= line.starts_with("AS \"memory\"");
            } else if in_memory {
                regions.extend(parse_mtree_line(line, backend_id));
            }
        }
        MemoryLayout::new(regions)
            .ok()
            .filter(|l| !l.regions.is_empty())
    }

    /// The regions, sorted by guest-physical address.
    pub fn regions(&self) -> &[Region] {
        &self.regions
    }

    /// Total bytes of RAM.
    pub fn total_len(&self) -> u64 {
        self.regions.iter().map(|r| r.len).sum()
    }

    /// One past the highest guest-physical address backed by RAM.
    pub fn max_address(&self) -> u64 {
        self.regions.last().map_or(0, Region::guest_phys_end)
    }

    /// The memory file size this layout needs.
    pub fn file_len_needed(&self) -> u64 {
        self.regions
            .iter()
            .map(|r| r.file_offset + r.len)
            .max()
            .unwrap_or(0)
    }

    /// The file offset of guest-physical range `addr`+`len`, which must lie in one region.
    pub fn translate(&self, addr: u64, len: u64) -> Result<u64, Error> {
        let max = self.max_address();
        let end = match addr.checked_add(len) {
            Some(end) if end <= max && addr < max => end,
            _ => return Err(Error::InvalidAddress { addr, len, max }),
        };
        let idx = self.regions.partition_point(|r| r.guest_phys_base <= addr);
        match idx.checked_sub(1).map(|i| &self.regions[i]) {
            Some(r) if end <= r.guest_phys_end() => Ok(r.file_offset + (addr - r.guest_phys_base)),
            _ => Err(Error::CrossesHole { addr, len }),
        }
    }
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::InvalidLayout {
        reason: reason.into(),
    }
}

/// Parses `  0000000000000000-000000007fffffff (prio 0, ram): ram0 @0000000000000000 KVM`.
fn parse_mtree_line(line: &str, backend_id: &str) -> Option<Region> {
    let (range, rest) = line.split_once(' ')?;
    let (start, end) = range.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    let (attrs, rest) = rest.split_once("): ")?;
    let kind = attrs.rsplit(", ").next()?;
    // `rom` is RAM mapped read-only (such as the PAM areas below 1 MiB); still RAM.
    if !matches!(kind, "ram" | "rom") {
        return None;
    }
    let mut words = rest.split_whitespace();
    if words.next()? != backend_id {
        return None;
    }
    let offset = match words.next() {
        Some(w) if w.starts_with('@') => u64::from_str_radix(&w[1..], 16).ok()?,
        _ => 0,
    };
    Some(Region {
        guest_phys_base: start,
        file_offset: offset,
        len: end.checked_sub(start)?.checked_add(1)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn q35_split_follows_qemu() {
        assert_eq!(MemoryLayout::x86_q35(256 * MIB).regions().len(), 1);
        let l = MemoryLayout::x86_q35(0xb000_0000);
        assert_eq!(l.regions()[0].len, 0x8000_0000);
        assert_eq!(
            l.regions()[1],
            Region {
                guest_phys_base: FOUR_GIB,
                file_offset: 0x8000_0000,
                len: 0x3000_0000
            }
        );
        let l = MemoryLayout::x86_q35(0xa000_0000);
        assert_eq!(l.regions().len(), 1);
        assert_eq!(MemoryLayout::x86_pc(4 * GIB).regions()[0].len, 3 * GIB);
        assert_eq!(
            MemoryLayout::aarch64_virt(GIB).regions()[0].guest_phys_base,
            GIB
        );
    }

    #[test]
    fn translate_checks_bounds_and_holes() {
        let l = MemoryLayout::x86_q35(3 * GIB);
        assert_eq!(l.translate(0x1000, 16).unwrap(), 0x1000);
        assert_eq!(l.translate(FOUR_GIB + 5, 1).unwrap(), 2 * GIB + 5);
        assert!(matches!(
            l.translate(2 * GIB - 8, 16),
            Err(Error::CrossesHole { .. })
        ));
        assert!(matches!(
            l.translate(3 * GIB, 1),
            Err(Error::CrossesHole { .. })
        ));
        assert!(matches!(
            l.translate(5 * GIB - 1, 2),
            Err(Error::InvalidAddress { max, .. }) if max == 5 * GIB
        ));
        assert!(matches!(
            l.translate(u64::MAX, 2),
            Err(Error::InvalidAddress { .. })
        ));
    }

    #[test]
    fn new_merges_and_rejects_overlap() {
        let r = |g, f, l| Region {
            guest_phys_base: g,
            file_offset: f,
            len: l,
        };
        let l = MemoryLayout::new(vec![r(0x1000, 0x1000, 0x1000), r(0, 0, 0x1000)]).unwrap();
        assert_eq!(l.regions(), &[r(0, 0, 0x2000)]);
        assert!(MemoryLayout::new(vec![r(0, 0, 0x2000), r(0x1000, 0x5000, 1)]).is_err());
        assert!(MemoryLayout::new(vec![r(0, 0, 0x2000), r(0x8000, 0x1000, 1)]).is_err());
    }

    #[test]
    fn parses_mtree() {
        let text = "FlatView #0\n AS \"memory\", root: system\n Root memory region: system\n  \
            0000000000000000-000000000009ffff (prio 0, ram): ram0 KVM\n  \
            00000000000a0000-00000000000bffff (prio 1, i/o): vga-lowmem\n  \
            00000000000c0000-00000000000dffff (prio 1, rom): ram0 @00000000000c0000 KVM\n  \
            00000000000e0000-000000007fffffff (prio 0, ram): ram0 @00000000000e0000 KVM\n  \
            0000000100000000-000000017fffffff (prio 0, ram): ram0 @0000000080000000 KVM\n\
            FlatView #1\n AS \"I/O\", root: io\n  \
            0000000000000000-0000000000000007 (prio 0, ram): ram0\n";
        let l = MemoryLayout::from_mtree(text, "ram0").unwrap();
        assert_eq!(l.regions().len(), 3);
        assert_eq!(l.regions()[1].guest_phys_base, 0xc0000);
        assert_eq!(l.regions()[1].len, 0x8000_0000 - 0xc0000);
        assert_eq!(l.regions()[2].file_offset, 0x8000_0000);
        assert!(MemoryLayout::from_mtree(text, "other").is_none());
    }
}
