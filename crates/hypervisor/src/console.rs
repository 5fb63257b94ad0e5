use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{broadcast, mpsc};

use crate::Error;

/// A VM's serial console as a hub: the backend publishes what the guest prints, any number of
/// readers subscribe (with scrollback, so nothing printed before they came is lost), and
/// writers send keystrokes to the guest.
#[derive(Debug, Clone)]
pub struct Console {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    scrollback: Mutex<VecDeque<u8>>,
    capacity: usize,
    output: broadcast::Sender<Arc<[u8]>>,
    input: mpsc::Sender<Vec<u8>>,
}

/// The backend's end of a [`Console`]: keystrokes to deliver to the guest.
#[derive(Debug)]
pub struct ConsoleInput(pub mpsc::Receiver<Vec<u8>>);

impl Console {
    /// A console keeping the last `scrollback` bytes of output.
    pub fn new(scrollback: usize) -> (Console, ConsoleInput) {
        let (input, input_rx) = mpsc::channel(64);
        let inner = Inner {
            scrollback: Mutex::new(VecDeque::with_capacity(scrollback.min(1 << 16))),
            capacity: scrollback,
            output: broadcast::channel(1024).0,
            input,
        };
        (
            Console {
                inner: Arc::new(inner),
            },
            ConsoleInput(input_rx),
        )
    }

    /// A publisher that does not keep the console alive: once every [`Console`] handle is
    /// dropped its [`ConsoleInput`] ends, so whoever feeds a console from afar (a server
    /// relaying an agent's) learns that nobody watches any more.
    pub fn publisher(&self) -> ConsolePublisher {
        ConsolePublisher(Arc::downgrade(&self.inner))
    }

    /// Records output from the guest and hands it to every subscriber.
    pub fn publish(&self, data: &[u8]) {
        publish(&self.inner, data);
    }

    /// The scrollback so far and a receiver for everything printed after it.
    pub fn subscribe(&self) -> (Vec<u8>, broadcast::Receiver<Arc<[u8]>>) {
        let scrollback = self
            .inner
            .scrollback
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let rx = self.inner.output.subscribe();
        (scrollback.iter().copied().collect(), rx)
    }

    /// Types `data` on the guest's console.
    pub async fn write(&self, data: &[u8]) -> Result<(), Error> {
        self.inner.input.send(data.to_vec()).await.map_err(|_| {
            Error::io(
                "console",
                std::io::Error::from(std::io::ErrorKind::BrokenPipe),
            )
        })
    }
}

/// A [`Console::publisher`]: publishes while the console lives.
#[derive(Debug, Clone)]
pub struct ConsolePublisher(Weak<Inner>);

impl ConsolePublisher {
    /// Publishes `data` (see [`Console::publish`]); `false` once the console is gone.
    pub fn publish(&self, data: &[u8]) -> bool {
        match self.0.upgrade() {
            Some(inner) => {
                publish(&inner, data);
                true
            }
            None => false,
        }
    }
}

fn publish(inner: &Inner, data: &[u8]) {
    let mut scrollback = inner.scrollback.lock().unwrap_or_else(|e| e.into_inner());
    scrollback.extend(data);
    let excess = scrollback.len().saturating_sub(inner.capacity);
    scrollback.drain(..excess);
    // Sent under the lock so that a subscriber sees each byte exactly once: either in its
    // scrollback copy or on its receiver. No subscriber is fine.
    let _ = inner.output.send(Arc::from(data));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_publisher_keeps_nothing_alive_and_the_input_ends_with_the_last_handle() {
        let (console, mut input) = Console::new(64);
        let publisher = console.publisher();
        let (_, mut rx) = console.subscribe();
        assert!(publisher.publish(b"hi"));
        assert_eq!(&*rx.recv().await.unwrap(), b"hi");
        let other = console.clone();
        drop(console);
        other.write(b"k").await.unwrap();
        assert_eq!(input.0.recv().await.unwrap(), b"k");
        drop(other);
        assert!(
            input.0.recv().await.is_none(),
            "no handle left: the input ends"
        );
        assert!(!publisher.publish(b"late"));
    }

    #[tokio::test]
    async fn subscriber_sees_scrollback_then_live_output_once() {
        let (console, mut input) = Console::new(8);
        console.publish(b"0123456789");
        let (back, mut rx) = console.subscribe();
        assert_eq!(back, b"23456789");
        console.publish(b"ab");
        assert_eq!(&*rx.recv().await.unwrap(), b"ab");
        console.write(b"ls\n").await.unwrap();
        assert_eq!(input.0.recv().await.unwrap(), b"ls\n");
    }
}
