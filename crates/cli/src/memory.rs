//! `corral vm memory …`: read, search, dump and map a running guest's RAM (VMs created with
//! `--introspection`). Every call is audited by corrald and needs the `memory` permission.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};
use corral_client::{Client, SnapshotChunk, SnapshotMode};
use corral_contract::ResourceName;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::args::{Format, parse_name};
use crate::{CliError, output};

/// The most bytes `read` asks for at once.
const MAX_READ: u64 = 64 << 20;

#[derive(Debug, Subcommand)]
pub enum MemoryCommand {
    /// Print bytes of guest-physical memory (hex dump, or raw with -o raw)
    Read(ReadArgs),
    /// Copy all guest RAM to a file (regions in guest-physical order, concatenated)
    Dump(DumpArgs),
    /// Print the guest-physical addresses where a text occurs
    Find(FindArgs),
    /// Write a Hilbert-curve map of guest RAM as PNG (black zeros, green text, red
    /// high-entropy data, blue the rest)
    Map(MapArgs),
}

#[derive(Debug, Args)]
pub struct ReadArgs {
    /// The VM's name
    #[arg(value_parser = parse_name)]
    pub name: ResourceName,
    /// Guest-physical address: hex (0x1000) or decimal (4096)
    #[arg(long, value_parser = parse_number)]
    pub addr: u64,
    /// Bytes to read, 1 to 64 MiB: hex or decimal
    #[arg(long, value_parser = parse_len)]
    pub len: u64,
    /// hex: `hexdump -C`-style lines with guest-physical addresses; raw: the bytes
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ReadFormat::Hex)]
    pub format: ReadFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReadFormat {
    /// Hex and ASCII, 16 bytes a line
    Hex,
    /// The bytes as they are
    Raw,
}

#[derive(Debug, Args)]
pub struct DumpArgs {
    /// The VM's name
    #[arg(value_parser = parse_name)]
    pub name: ResourceName,
    /// File to write (replaced only once the whole dump has arrived)
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// consistent: the guest keeps running, pages that changed during the copy are re-read
    /// and those that kept changing reported; atomic: the guest is paused for the copy
    #[arg(long, value_enum, default_value_t = DumpMode::Consistent)]
    pub mode: DumpMode,
    /// How to print the report: table (one line) or json/yaml
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DumpMode {
    /// Copy while the guest runs; report torn pages
    Consistent,
    /// Pause the guest for the copy
    Atomic,
}

#[derive(Debug, Args)]
pub struct FindArgs {
    /// The VM's name
    #[arg(value_parser = parse_name)]
    pub name: ResourceName,
    /// The text to look for (its UTF-8 bytes; 1 to 4096)
    #[arg(long)]
    pub pattern: String,
    /// The most addresses to print
    #[arg(long, default_value_t = 1000)]
    pub limit: u32,
    /// table: one hex address a line; json/yaml: {vm, pattern, addresses, truncated}
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct MapArgs {
    /// The VM's name
    #[arg(value_parser = parse_name)]
    pub name: ResourceName,
    /// PNG file to write
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Width and height in pixels: a power of two from 16 to 2048
    #[arg(long, default_value_t = 512)]
    pub side: u32,
}

/// Parses `0x1000`, `4096` or `4_096`.
pub fn parse_number(s: &str) -> Result<u64, String> {
    let t = s.trim().replace('_', "");
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => t.parse(),
    };
    parsed.map_err(|_| format!("{s:?} is not a number: use hex (0x1000) or decimal (4096)"))
}

fn parse_len(s: &str) -> Result<u64, String> {
    let len = parse_number(s)?;
    if !(1..=MAX_READ).contains(&len) {
        return Err(format!(
            "{len} is out of range: read 1 byte to 64 MiB at once (use `corral vm memory dump` \
             for all of RAM)"
        ));
    }
    Ok(len)
}

pub async fn run(client: Client, command: MemoryCommand) -> Result<(), CliError> {
    match command {
        MemoryCommand::Read(args) => {
            let bytes = client
                .read_memory(args.name.as_str(), args.addr, args.len)
                .await?;
            let mut out = std::io::stdout().lock();
            match args.format {
                ReadFormat::Raw => out.write_all(&bytes)?,
                ReadFormat::Hex => out.write_all(hexdump(args.addr, &bytes).as_bytes())?,
            }
            out.flush()?;
            Ok(())
        }
        MemoryCommand::Find(args) => {
            let (addresses, truncated) = client
                .find_in_memory(args.name.as_str(), args.pattern.as_bytes(), args.limit)
                .await?;
            let text = match args.format {
                Format::Table => {
                    let mut text: String = addresses.iter().map(|a| format!("{a:#x}\n")).collect();
                    if truncated {
                        eprintln!(
                            "note: more than {} matches; raise --limit to see more",
                            args.limit
                        );
                    }
                    if addresses.is_empty() {
                        eprintln!("no match in vm/{}", args.name);
                        text.clear();
                    }
                    text
                }
                format => {
                    let value = json!({"vm": args.name.as_str(), "pattern": args.pattern,
                        "addresses": addresses, "truncated": truncated});
                    structured(&value, format)?
                }
            };
            crate::commands::print(&text)
        }
        MemoryCommand::Dump(args) => dump(&client, &args).await,
        MemoryCommand::Map(args) => {
            let png = client.map_memory(args.name.as_str(), args.side).await?;
            write_replacing(&args.out, |file| file.write_all(&png))?;
            eprintln!(
                "wrote a {side}×{side} map of vm/{} to {}",
                args.name,
                args.out.display(),
                side = args.side
            );
            Ok(())
        }
    }
}

fn structured(value: &serde_json::Value, format: Format) -> Result<String, CliError> {
    Ok(match format {
        Format::Yaml => output::yaml(value),
        _ => format!("{}\n", serde_json::to_string_pretty(value)?),
    })
}

async fn dump(client: &Client, args: &DumpArgs) -> Result<(), CliError> {
    let mode = match args.mode {
        DumpMode::Consistent => SnapshotMode::Consistent,
        DumpMode::Atomic => SnapshotMode::Atomic,
    };
    let mut snapshot = client.snapshot_memory(args.name.as_str(), mode).await?;
    let bar = progress(snapshot.total_bytes);
    let (tmp, mut file) = temp_beside(&args.out)?;
    let result = async {
        let mut written = 0u64;
        loop {
            match snapshot.next().await? {
                SnapshotChunk::Data(data) => {
                    file.write_all(&data)?;
                    written += data.len() as u64;
                    bar.set_position(written);
                }
                SnapshotChunk::Done(report) => {
                    file.flush()?;
                    if written != snapshot.total_bytes {
                        return Err(CliError::Failed(format!(
                            "the dump of vm/{} ended after {written} of {} bytes",
                            args.name, snapshot.total_bytes
                        )));
                    }
                    return Ok(report);
                }
            }
        }
    }
    .await;
    bar.finish_and_clear();
    let report = match result {
        Ok(report) => report,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, &args.out).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        CliError::Failed(format!("cannot write {}: {e}", args.out.display()))
    })?;
    let mode_name = match args.mode {
        DumpMode::Consistent => "consistent",
        DumpMode::Atomic => "atomic",
    };
    let regions: Vec<serde_json::Value> = snapshot
        .regions
        .iter()
        .map(|(base, len)| json!({"guest_phys_base": base, "len": len}))
        .collect();
    let text = match args.format {
        Format::Table => {
            let how = match args.mode {
                DumpMode::Consistent => format!(
                    "{} torn pages, {} re-read",
                    report.torn_pages.len(),
                    report.reread_pages
                ),
                DumpMode::Atomic => format!("guest paused {:.1?}", report.paused),
            };
            format!(
                "wrote {} bytes of vm/{} RAM to {} ({mode_name}: {how})\n",
                snapshot.total_bytes,
                args.name,
                args.out.display()
            )
        }
        format => structured(
            &json!({
                "vm": args.name.as_str(), "file": args.out, "mode": mode_name,
                "bytes": snapshot.total_bytes, "regions": regions,
                "torn_pages": report.torn_pages, "reread_pages": report.reread_pages,
                "pause_us": report.paused.as_micros() as u64,
                "copy_us": report.copy.as_micros() as u64,
            }),
            format,
        )?,
    };
    crate::commands::print(&text)
}

fn progress(total: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec}")
    {
        bar.set_style(style);
    }
    bar
}

/// A temporary file beside `path`, so the final rename never crosses file systems.
fn temp_beside(path: &Path) -> Result<(PathBuf, std::io::BufWriter<std::fs::File>), CliError> {
    let name = path
        .file_name()
        .ok_or_else(|| CliError::Failed(format!("--out {}: not a file name", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.part", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let file = std::fs::File::create(&tmp)
        .map_err(|e| CliError::Failed(format!("cannot create {}: {e}", path.display())))?;
    Ok((tmp, std::io::BufWriter::with_capacity(1 << 20, file)))
}

fn write_replacing(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> std::io::Result<()>,
) -> Result<(), CliError> {
    let (tmp, mut file) = temp_beside(path)?;
    let done = write(&mut file)
        .and_then(|()| file.flush())
        .and_then(|()| std::fs::rename(&tmp, path));
    done.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        CliError::Failed(format!("cannot write {}: {e}", path.display()))
    })
}

/// `hexdump -C`-style lines, addressed by guest-physical address.
fn hexdump(addr: u64, bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 4 + 32);
    for (i, line) in bytes.chunks(16).enumerate() {
        out.push_str(&format!("{:016x}  ", addr + (i * 16) as u64));
        for j in 0..16 {
            match line.get(j) {
                Some(b) => out.push_str(&format!("{b:02x} ")),
                None => out.push_str("   "),
            }
            if j == 7 {
                out.push(' ');
            }
        }
        out.push_str(" |");
        out.extend(line.iter().map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        }));
        out.push_str("|\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_hexdump() {
        assert_eq!(parse_number("0x1000"), Ok(4096));
        assert_eq!(parse_number("4096"), Ok(4096));
        assert!(parse_number("ten").unwrap_err().contains("hex (0x1000)"));
        assert!(parse_len("0").unwrap_err().contains("64 MiB"));
        let dump = hexdump(0x1000, b"corral marker!\x00\x01xyz");
        assert_eq!(
            dump,
            "0000000000001000  63 6f 72 72 61 6c 20 6d  61 72 6b 65 72 21 00 01  |corral marker!..|\n\
             0000000000001010  78 79 7a                                          |xyz|\n"
        );
    }
}
