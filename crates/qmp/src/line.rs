//! Newline-delimited reading with a hard bound on memory.

use std::io;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

/// Buffers larger than this are released after each line, so one large reply does
/// not pin its memory for the life of the connection.
const RETAINED_CAPACITY: usize = 64 * 1024;

/// Why no line could be read.
#[derive(Debug)]
pub(crate) enum LineError {
    /// The peer closed the connection, possibly after part of a line.
    Eof,
    /// A line exceeded the limit; the rest of it was not read.
    TooLong,
    /// Reading failed.
    Io(io::Error),
}

/// Reads lines of at most `limit` bytes (newline excluded), never buffering more than
/// `limit + 1` bytes plus the `BufReader`'s own buffer.
#[derive(Debug)]
pub(crate) struct LineReader<R> {
    reader: BufReader<R>,
    buf: Vec<u8>,
    limit: usize,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub(crate) fn new(reader: R, limit: usize) -> Self {
        Self {
            reader: BufReader::new(reader),
            buf: Vec::new(),
            limit,
        }
    }

    /// The next line without its `\n` (a trailing `\r` is left in place).
    /// Not cancel safe: dropping the future may lose part of a line.
    pub(crate) async fn next_line(&mut self) -> Result<&[u8], LineError> {
        if self.buf.capacity() > RETAINED_CAPACITY {
            self.buf = Vec::new();
        }
        self.buf.clear();
        // One byte over the limit distinguishes "exactly at the limit, then newline"
        // from "too long".
        let max = u64::try_from(self.limit)
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let mut bounded = (&mut self.reader).take(max);
        let n = bounded
            .read_until(b'\n', &mut self.buf)
            .await
            .map_err(LineError::Io)?;
        match self.buf.last() {
            Some(b'\n') => {
                self.buf.pop();
                Ok(&self.buf)
            }
            _ if n == 0 || (n as u64) < max => {
                if n > 0 {
                    tracing::debug!(bytes = n, "QMP peer closed the connection mid-line");
                }
                Err(LineError::Eof)
            }
            _ => Err(LineError::TooLong),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn splits_lines_and_reports_eof() {
        let mut lines = LineReader::new(&b"a\n\nbc\r\ntail"[..], 16);
        assert_eq!(lines.next_line().await.ok(), Some(&b"a"[..]));
        assert_eq!(lines.next_line().await.ok(), Some(&b""[..]));
        assert_eq!(lines.next_line().await.ok(), Some(&b"bc\r"[..]));
        assert!(matches!(lines.next_line().await, Err(LineError::Eof)));
        assert!(matches!(lines.next_line().await, Err(LineError::Eof)));
    }

    #[tokio::test]
    async fn accepts_exactly_the_limit() {
        let mut lines = LineReader::new(&b"abcd\nabcde\n"[..], 4);
        assert_eq!(lines.next_line().await.ok(), Some(&b"abcd"[..]));
        assert!(matches!(lines.next_line().await, Err(LineError::TooLong)));
    }

    #[tokio::test]
    async fn endless_line_is_bounded() {
        // An unbounded reader would never return from an endless stream.
        let limit = 1024 * 1024;
        let mut lines = LineReader::new(tokio::io::repeat(b'x'), limit);
        assert!(matches!(lines.next_line().await, Err(LineError::TooLong)));
        assert!(lines.buf.capacity() <= 2 * (limit + 1));
    }
}
