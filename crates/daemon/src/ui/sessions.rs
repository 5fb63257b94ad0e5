//! Browser sessions and the one-time codes `corral ui` links carry, in memory: a daemon
//! restart ends them (log in again). Secrets are kept only as their BLAKE3 hashes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};

use crate::auth::Caller;

/// How long a session lasts after login.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// How long a `corral ui` link may wait to be opened.
pub const CODE_TTL: Duration = Duration::from_secs(60);
/// The most sessions kept at once; the oldest goes first.
const MAX_SESSIONS: usize = 4096;

#[derive(Debug, Clone)]
struct Entry {
    caller: Caller,
    expires: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    sessions: HashMap<String, Entry>,
    codes: HashMap<String, Entry>,
}

/// Sessions and login codes.
#[derive(Debug, Default)]
pub struct Sessions {
    inner: Mutex<Inner>,
}

fn secret() -> String {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's random source");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hash(secret: &str) -> String {
    blake3::hash(secret.as_bytes()).to_hex().to_string()
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new session for `caller`: its secret, for the cookie.
    pub fn start(&self, caller: Caller) -> String {
        let secret = secret();
        let now = Instant::now();
        let mut inner = self.lock();
        inner.sessions.retain(|_, e| e.expires > now);
        if inner.sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = inner
                .sessions
                .iter()
                .min_by_key(|(_, e)| e.expires)
                .map(|(k, _)| k.clone())
        {
            inner.sessions.remove(&oldest);
        }
        inner.sessions.insert(
            hash(&secret),
            Entry {
                caller,
                expires: now + SESSION_TTL,
            },
        );
        secret
    }

    /// The caller of the live session `secret`.
    pub fn caller(&self, secret: &str) -> Option<Caller> {
        let inner = self.lock();
        let entry = inner.sessions.get(&hash(secret))?;
        (entry.expires > Instant::now()).then(|| entry.caller.clone())
    }

    /// Ends the session `secret`.
    pub fn end(&self, secret: &str) {
        self.lock().sessions.remove(&hash(secret));
    }

    /// A one-time login code for `caller`, good for [`CODE_TTL`].
    pub fn code(&self, caller: Caller) -> String {
        let code = secret();
        let now = Instant::now();
        let mut inner = self.lock();
        inner.codes.retain(|_, e| e.expires > now);
        inner.codes.insert(
            hash(&code),
            Entry {
                caller,
                expires: now + CODE_TTL,
            },
        );
        code
    }

    /// The caller of a login code not used and not expired; it cannot be used again.
    pub fn redeem(&self, code: &str) -> Option<Caller> {
        let entry = self.lock().codes.remove(&hash(code))?;
        (entry.expires > Instant::now()).then_some(entry.caller)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_logs_in_once_and_a_session_ends_on_logout() {
        let sessions = Sessions::default();
        let caller = Caller::admin("unix:uid=0".into());
        let code = sessions.code(caller.clone());
        assert_eq!(code.len(), 64);
        assert_eq!(sessions.redeem(&code), Some(caller.clone()));
        assert_eq!(sessions.redeem(&code), None, "a code is used once");
        let secret = sessions.start(caller.clone());
        assert_eq!(sessions.caller(&secret), Some(caller));
        assert_eq!(sessions.caller("forged"), None);
        sessions.end(&secret);
        assert_eq!(sessions.caller(&secret), None);
    }
}
