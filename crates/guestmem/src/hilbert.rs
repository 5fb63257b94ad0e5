use crate::{Error, GuestRam};

/// The cell `(x, y)` at distance `d` along the Hilbert curve filling a `side`×`side` grid
/// (`side` a power of two).
pub fn hilbert_d2xy(side: u32, d: u64) -> (u32, u32) {
    let (mut x, mut y) = (0u64, 0u64);
    let mut t = d;
    let mut s = 1u64;
    while s < u64::from(side) {
        let rx = 1 & (t / 2);
        let ry = 1 & (t ^ rx);
        if ry == 0 {
            if rx == 1 {
                x = s - 1 - x;
                y = s - 1 - y;
            }
            std::mem::swap(&mut x, &mut y);
        }
        x += s * rx;
        y += s * ry;
        t /= 4;
        s *= 2;
    }
    (x as u32, y as u32)
}

const ZERO: [f32; 3] = [0.0, 0.0, 0.0];
const TEXT: [f32; 3] = [70.0, 210.0, 90.0];
const ENTROPY: [f32; 3] = [235.0, 70.0, 50.0];
const OTHER: [f32; 3] = [60.0, 120.0, 230.0];

/// RAM as one run of bytes in layout order, cut into `cells` equal shares.
struct Cells<'a> {
    /// (offset in layout order, bytes) of each region.
    regions: Vec<(u64, &'a [u8])>,
    total: u64,
    cells: u64,
}

impl<'a> Cells<'a> {
    fn new(ram: &'a GuestRam, cells: u64) -> Self {
        let mut start = 0;
        let regions = ram
            .regions()
            .map(|(_, bytes)| {
                let r = (start, bytes);
                start += bytes.len() as u64;
                r
            })
            .collect();
        Cells {
            regions,
            total: ram.len(),
            cells,
        }
    }

    /// The colour of cell `d` from `samples` bytes spread evenly across it.
    fn colour(&self, d: u64, samples: u64) -> Option<[u8; 3]> {
        let first = self.total * d / self.cells;
        let len = (self.total * (d + 1) / self.cells).saturating_sub(first);
        if len == 0 {
            return None;
        }
        let n = samples.min(len);
        let idx = self.regions.partition_point(|(s, _)| *s <= first) - 1;
        let (start, bytes) = self.regions[idx];
        // Gather first, classify after: the loads are independent, so the CPU keeps many
        // cache misses in flight instead of waiting on each behind a data-dependent branch.
        let mut gathered = [0u8; MAX_SAMPLES];
        let n = n.min(MAX_SAMPLES as u64);
        let picked = &mut gathered[..n as usize];
        if first - start + len <= bytes.len() as u64 {
            // The whole cell lies in one region: index it directly.
            let cell = &bytes[(first - start) as usize..(first - start + len) as usize];
            for (k, b) in picked.iter_mut().enumerate() {
                *b = cell[(len * k as u64 / n) as usize];
            }
        } else {
            for (k, b) in picked.iter_mut().enumerate() {
                let i = first + len * k as u64 / n;
                let idx = self.regions.partition_point(|(s, _)| *s <= i) - 1;
                let (s, bytes) = self.regions[idx];
                *b = bytes[(i - s) as usize];
            }
        }
        let mut class = Class::default();
        for &b in picked.iter() {
            class.add(b);
        }
        Some(class.rgb(n as u32))
    }
}

/// The most bytes sampled per cell.
pub const MAX_SAMPLES: usize = 256;

/// Byte class by value: 0 zero, 1 text, 2 anything else.
const CLASS: [u8; 256] = {
    let mut t = [2u8; 256];
    t[0] = 0;
    let mut b = 0x20;
    while b < 0x7f {
        t[b] = 1;
        b += 1;
    }
    t[b'\n' as usize] = 1;
    t[b'\t' as usize] = 1;
    t[b'\r' as usize] = 1;
    t
};

/// Counts of the byte classes a cell's samples fall in.
#[derive(Default)]
struct Class {
    counts: [u32; 3],
    // One bit per byte value seen: cheaper to clear per cell than a 256-entry table.
    seen: [u64; 4],
}

impl Class {
    fn add(&mut self, b: u8) {
        // Table lookups, no branches: the classes of random data are unpredictable.
        self.counts[CLASS[b as usize] as usize] += 1;
        self.seen[(b >> 6) as usize] |= 1 << (b & 63);
    }

    fn rgb(&self, n: u32) -> [u8; 3] {
        let distinct: u32 = self.seen.iter().map(|w| w.count_ones()).sum();
        let n = n as f32;
        let [zero, text, _] = self.counts;
        let rest = n - zero as f32 - text as f32;
        // Random bytes rarely repeat in a small sample; structured data does.
        let entropic = rest > 0.0 && distinct as f32 >= 0.75 * n.min(256.0) && n >= 8.0;
        let (rest_entropy, rest_other) = if entropic { (rest, 0.0) } else { (0.0, rest) };
        let mut out = [0u8; 3];
        for (c, v) in out.iter_mut().enumerate() {
            let x = (ZERO[c] * zero as f32
                + TEXT[c] * text as f32
                + ENTROPY[c] * rest_entropy
                + OTHER[c] * rest_other)
                / n;
            *v = x.round().clamp(0.0, 255.0) as u8;
        }
        out
    }
}

/// An RGB frame (`side`×`side` pixels, 3 bytes each, rows top to bottom) of `ram` laid
/// along a Hilbert curve, so nearby addresses stay nearby on screen. Each cell covers an
/// equal share of RAM in layout order and is coloured from `samples_per_cell` bytes spread
/// across it (at most [`MAX_SAMPLES`]): black for zeros, green for ASCII text, red for high-entropy (compressed or
/// encrypted) data, blue for anything else. `side` is rounded up to a power of two.
pub fn hilbert_frame(ram: &GuestRam, side: u32, samples_per_cell: u32) -> Vec<u8> {
    let mut stream = HilbertStream::new(side, samples_per_cell, 1);
    stream.next_frame(ram);
    stream.frame
}

/// A live Hilbert view of a guest's RAM, for frames at a high rate: each
/// [`HilbertStream::next_frame`] re-samples one of `stripes` contiguous bands of cells in
/// turn and keeps the rest from earlier calls, so a frame costs `1/stripes` of a full one and
/// every cell is fresh at least every `stripes` frames (at 60 fps and 8 stripes, 7.5 times a
/// second). Cell colours are as in [`hilbert_frame`].
#[derive(Debug, Clone)]
pub struct HilbertStream {
    side: u32,
    samples: u32,
    stripes: u32,
    next: u32,
    // Byte offset in `frame` of each cell along the curve, computed once.
    pixel: Vec<u32>,
    frame: Vec<u8>,
}

impl HilbertStream {
    /// A view `side` pixels square (rounded up to a power of two), `samples_per_cell` bytes
    /// sampled per cell, refreshed in `stripes` bands (1 re-samples everything every frame).
    pub fn new(side: u32, samples_per_cell: u32, stripes: u32) -> Self {
        let side = side.max(1).next_power_of_two();
        let cells = u64::from(side) * u64::from(side);
        let pixel = (0..cells)
            .map(|d| {
                let (x, y) = hilbert_d2xy(side, d);
                (y * side + x) * 3
            })
            .collect();
        HilbertStream {
            side,
            samples: samples_per_cell.max(1),
            stripes: stripes.clamp(1, side * side),
            next: 0,
            pixel,
            frame: vec![0; (cells * 3) as usize],
        }
    }

    /// Width and height in pixels.
    pub fn side(&self) -> u32 {
        self.side
    }

    /// Re-samples the next band of cells of `ram` and returns the whole frame.
    pub fn next_frame(&mut self, ram: &GuestRam) -> &[u8] {
        self.refresh(ram);
        &self.frame
    }

    /// Re-samples the next band of cells of `ram`; whether any pixel changed colour (a
    /// stream need not send a frame that looks like the last one).
    pub fn refresh(&mut self, ram: &GuestRam) -> bool {
        let cells = self.pixel.len() as u64;
        let view = Cells::new(ram, cells);
        let stripes = u64::from(self.stripes);
        let band = u64::from(self.next);
        self.next = (self.next + 1) % self.stripes;
        if view.total == 0 {
            return false;
        }
        let mut changed = false;
        for d in cells * band / stripes..cells * (band + 1) / stripes {
            if let Some(rgb) = view.colour(d, u64::from(self.samples)) {
                let px = self.pixel[d as usize] as usize;
                let old = &mut self.frame[px..px + 3];
                changed |= *old != rgb;
                old.copy_from_slice(&rgb);
            }
        }
        changed
    }

    /// The frame as it stands: `side`×`side` RGB pixels.
    pub fn frame(&self) -> &[u8] {
        &self.frame
    }
}

/// Encodes an RGB frame `width` pixels wide (such as one from [`hilbert_frame`]) as PNG.
pub fn to_png(frame: &[u8], width: u32) -> Result<Vec<u8>, Error> {
    let height = if width == 0 {
        0
    } else {
        (frame.len() / 3 / width as usize) as u32
    };
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder
        .write_header()
        .map_err(|source| Error::Png { source })?;
    writer
        .write_image_data(&frame[..(width * height * 3) as usize])
        .map_err(|source| Error::Png { source })?;
    writer.finish().map_err(|source| Error::Png { source })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::MemoryLayout;

    #[test]
    fn curve_is_a_bijection_of_adjacent_cells() {
        let side = 16;
        let mut seen = vec![false; 256];
        let mut prev: Option<(u32, u32)> = None;
        for d in 0..256 {
            let (x, y) = hilbert_d2xy(side, d);
            assert!(x < side && y < side);
            assert!(!seen[(y * side + x) as usize], "cell {x},{y} visited twice");
            seen[(y * side + x) as usize] = true;
            if let Some((px, py)) = prev {
                assert_eq!(
                    px.abs_diff(x) + py.abs_diff(y),
                    1,
                    "step {d} is not adjacent"
                );
            }
            prev = Some((x, y));
        }
        assert!(seen.iter().all(|s| *s));
        assert_eq!(hilbert_d2xy(16, 0), (0, 0));
        assert_eq!(hilbert_d2xy(16, 255), (15, 0));
    }

    #[test]
    fn frame_colours_byte_classes_and_encodes() {
        let mut bytes = vec![0u8; 4 * 4096];
        for (i, b) in bytes[4096..8192].iter_mut().enumerate() {
            *b = b"the quick brown fox "[i % 20];
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for b in &mut bytes[8192..12288] {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&bytes).unwrap();
        let ram = GuestRam::open(f.path(), MemoryLayout::flat(bytes.len() as u64)).unwrap();
        // 2×2: one cell per 4 KiB, in curve order (0,0) (0,1) (1,1) (1,0).
        let frame = hilbert_frame(&ram, 2, 64);
        let px = |x: usize, y: usize| &frame[(y * 2 + x) * 3..(y * 2 + x) * 3 + 3];
        assert_eq!(px(0, 0), [0, 0, 0]);
        assert!(px(0, 1)[1] > 150, "text is green: {:?}", px(0, 1));
        assert!(px(1, 1)[0] > 150, "random is red: {:?}", px(1, 1));
        let png = to_png(&frame, 2).unwrap();
        assert_eq!(&png[1..4], b"PNG");

        // A stream in 2 bands shows the same picture once both bands have been sampled.
        let mut stream = HilbertStream::new(2, 64, 2);
        let half = stream.next_frame(&ram).to_vec();
        assert_ne!(half, frame, "one band is not the whole picture");
        assert_eq!(stream.next_frame(&ram), &frame[..]);
        assert_eq!(stream.side(), 2);
    }
}
