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

/// An RGB frame (`side`×`side` pixels, 3 bytes each, rows top to bottom) of `ram` laid
/// along a Hilbert curve, so nearby addresses stay nearby on screen. Each cell covers an
/// equal share of RAM in layout order and is coloured from `samples_per_cell` bytes spread
/// across it: black for zeros, green for ASCII text, red for high-entropy (compressed or
/// encrypted) data, blue for anything else. `side` is rounded up to a power of two.
pub fn hilbert_frame(ram: &GuestRam, side: u32, samples_per_cell: u32) -> Vec<u8> {
    let side = side.max(1).next_power_of_two();
    let cells = u64::from(side) * u64::from(side);
    let samples = u64::from(samples_per_cell.max(1));
    let total = ram.len();
    let regions: Vec<(u64, &[u8])> = {
        let mut start = 0;
        ram.regions()
            .map(|(_, bytes)| {
                let r = (start, bytes);
                start += bytes.len() as u64;
                r
            })
            .collect()
    };
    let byte_at = |i: u64| -> u8 {
        let idx = regions.partition_point(|(s, _)| *s <= i) - 1;
        let (s, bytes) = regions[idx];
        bytes[(i - s) as usize]
    };
    let mut frame = vec![0u8; (cells * 3) as usize];
    if total == 0 {
        return frame;
    }
    for d in 0..cells {
        let first = total * d / cells;
        let len = (total * (d + 1) / cells).saturating_sub(first);
        if len == 0 {
            continue;
        }
        let n = samples.min(len);
        let (mut zero, mut text) = (0u32, 0u32);
        let mut seen = [false; 256];
        let mut distinct = 0u32;
        for k in 0..n {
            let b = byte_at(first + len * k / n);
            if b == 0 {
                zero += 1;
            } else if b.is_ascii_graphic() || matches!(b, b' ' | b'\n' | b'\t' | b'\r') {
                text += 1;
            }
            if !seen[b as usize] {
                seen[b as usize] = true;
                distinct += 1;
            }
        }
        let n = n as f32;
        let rest = n - zero as f32 - text as f32;
        // Random bytes rarely repeat in a small sample; structured data does.
        let entropic = rest > 0.0 && distinct as f32 >= 0.75 * n.min(256.0) && n >= 8.0;
        let (rest_entropy, rest_other) = if entropic { (rest, 0.0) } else { (0.0, rest) };
        let (x, y) = hilbert_d2xy(side, d);
        let px = ((y as usize) * side as usize + x as usize) * 3;
        for c in 0..3 {
            let v = (ZERO[c] * zero as f32
                + TEXT[c] * text as f32
                + ENTROPY[c] * rest_entropy
                + OTHER[c] * rest_other)
                / n;
            frame[px + c] = v.round().clamp(0.0, 255.0) as u8;
        }
    }
    frame
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
    }
}
