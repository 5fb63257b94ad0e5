use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

use crate::Error;

/// Everything a guest printed on its console, searchable by line, with waiting.
#[derive(Debug)]
pub struct Output {
    text: Mutex<Vec<u8>>,
    len: watch::Sender<usize>,
}

impl Default for Output {
    fn default() -> Self {
        Output {
            text: Mutex::new(Vec::new()),
            len: watch::channel(0).0,
        }
    }
}

impl Output {
    /// Appends console bytes.
    pub fn push(&self, data: &[u8]) {
        let mut text = self.text.lock().unwrap_or_else(|e| e.into_inner());
        text.extend_from_slice(data);
        self.len.send_replace(text.len());
    }

    /// A position in the output; pass it to [`Output::wait_for_line_since`] to only look at
    /// what comes later.
    pub fn mark(&self) -> usize {
        self.text.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Complete lines printed since `mark`, without `\r`.
    pub fn lines_since(&self, mark: usize) -> Vec<String> {
        let text = self.text.lock().unwrap_or_else(|e| e.into_inner());
        let tail = &text[mark.min(text.len())..];
        let complete = match tail.iter().rposition(|&b| b == b'\n') {
            Some(end) => &tail[..end],
            None => return Vec::new(),
        };
        String::from_utf8_lossy(complete)
            .lines()
            .map(|l| l.trim_end_matches('\r').to_owned())
            .collect()
    }

    /// The last `n` lines, complete or not, for error messages.
    pub fn tail(&self, n: usize) -> String {
        let text = self.text.lock().unwrap_or_else(|e| e.into_inner());
        let s = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Waits for a complete line containing `needle` printed after `mark`, and returns it.
    pub async fn wait_for_line_since(
        &self,
        mark: usize,
        needle: &str,
        timeout: Duration,
    ) -> Result<String, Error> {
        let mut changes = self.len.subscribe();
        let search = async {
            loop {
                if let Some(line) = self
                    .lines_since(mark)
                    .into_iter()
                    .find(|l| l.contains(needle))
                {
                    return line;
                }
                if changes.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, search)
            .await
            .map_err(|_| Error::Timeout {
                needle: needle.to_owned(),
                waited: timeout,
                tail: self.tail(15),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_complete_lines_after_a_mark() {
        let out = std::sync::Arc::new(Output::default());
        out.push(b"old MARK\r\n");
        let mark = out.mark();
        let o = out.clone();
        let waiter = tokio::spawn(async move {
            o.wait_for_line_since(mark, "MARK", Duration::from_secs(5))
                .await
        });
        out.push(b"new MA");
        out.push(b"RK 2\r\n");
        assert_eq!(waiter.await.unwrap().unwrap(), "new MARK 2");
        let err = out
            .wait_for_line_since(out.mark(), "never", Duration::from_millis(10))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("new MARK 2"), "{err}");
    }
}
