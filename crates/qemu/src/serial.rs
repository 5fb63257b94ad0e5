//! The serial console pump: QEMU's console socket → a bounded log file and the [`Console`] hub;
//! keystrokes from the hub → the socket.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use corral_hypervisor::{Console, ConsoleInput};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// A log file that never grows past `limit`: when full it becomes `<name>.1` (replacing the
/// previous one) and a new file starts, so at most twice `limit` is on disk.
#[derive(Debug)]
pub struct BoundedLog {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    limit: u64,
}

impl BoundedLog {
    /// Opens (appending) the log at `path`; a new file is created 0600.
    pub fn open(path: PathBuf, limit: u64) -> std::io::Result<Self> {
        let file = File::options()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)?;
        let size = file.metadata()?.len();
        Ok(BoundedLog {
            path,
            file: Some(file),
            size,
            limit,
        })
    }

    /// Appends `data`, rotating first when it would not fit.
    pub fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        if self.size > 0 && self.size + data.len() as u64 > self.limit {
            self.file = None;
            let mut old = self.path.clone().into_os_string();
            old.push(".1");
            std::fs::rename(&self.path, old)?;
            self.size = 0;
        }
        if self.file.is_none() {
            self.file = Some(
                File::options()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(&self.path)?,
            );
        }
        if let Some(file) = &mut self.file {
            file.write_all(data)?;
            self.size += data.len() as u64;
        }
        Ok(())
    }
}

/// Runs until QEMU closes the console socket.
pub async fn pump(
    stream: UnixStream,
    console: Console,
    mut input: ConsoleInput,
    mut log: BoundedLog,
) {
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = vec![0u8; 16 << 10];
    loop {
        tokio::select! {
            read = rd.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if let Err(e) = log.write(&buf[..n]) {
                        tracing::warn!(path = %log.path.display(), error = %e, "cannot write serial log");
                    }
                    console.publish(&buf[..n]);
                }
            },
            Some(keys) = input.0.recv() => {
                if wr.write_all(&keys).await.is_err() {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_rotates_and_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        let mut log = BoundedLog::open(path.clone(), 100).unwrap();
        for _ in 0..25 {
            log.write(&[b'x'; 10]).unwrap();
        }
        let current = std::fs::metadata(&path).unwrap().len();
        let rotated = std::fs::metadata(dir.path().join("serial.log.1"))
            .unwrap()
            .len();
        assert!(current <= 100 && rotated <= 100, "{current} {rotated}");
        assert_eq!(current + rotated, 150);
    }
}
