//! Who each credential is: an index of the store's identities (followed through a watch), the
//! token file, and the rule for local users; and the revocations that close open streams.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use corral_contract::{Credential, Identity};
use corral_service::{EventType, IdentityService, ServiceError};
use tokio::sync::broadcast;

use super::tokens::Tokens;
use super::{Caller, Principal};

/// The credentials the store's identities name, each to its identity.
#[derive(Debug, Default)]
struct Index {
    tokens: HashMap<String, Arc<Identity>>,
    certs: HashMap<String, Arc<Identity>>,
    uids: HashMap<u32, Arc<Identity>>,
    /// Name → credential, to drop an identity's entry when it is deleted.
    names: HashMap<String, Credential>,
    /// Name → the last store revision of a revoked identity: older events of it, which a
    /// lagging watch may still deliver, do not bring it back.
    revoked: HashMap<String, u64>,
    /// Token hash → name of a revoked identity: its refusals are audited under its name.
    revoked_tokens: HashMap<String, String>,
}

impl Index {
    fn insert(&mut self, id: Identity) {
        let name = id.metadata.name.to_string();
        if self
            .revoked
            .get(&name)
            .is_some_and(|at| id.metadata.resource_version <= *at)
        {
            return;
        }
        self.remove(&name);
        let credential = id.spec.credential.clone();
        let id = Arc::new(id);
        match &credential {
            Credential::Token { blake3: Some(hash) } => {
                self.tokens.insert(hash.clone(), id);
            }
            Credential::Token { blake3: None } => return,
            Credential::Cert { sha256 } => {
                self.certs.insert(sha256.clone(), id);
            }
            Credential::Unix { uid } => {
                self.uids.insert(*uid, id);
            }
        }
        self.names.insert(name, credential);
    }

    fn remove(&mut self, name: &str) -> bool {
        let Some(credential) = self.names.remove(name) else {
            return false;
        };
        match credential {
            Credential::Token { blake3: Some(hash) } => {
                self.revoked_tokens.insert(hash.clone(), name.to_owned());
                self.tokens.remove(&hash)
            }
            Credential::Token { blake3: None } => None,
            Credential::Cert { sha256 } => self.certs.remove(&sha256),
            Credential::Unix { uid } => self.uids.remove(&uid),
        };
        true
    }
}

/// Local users who are admins besides corrald's own user and root.
#[derive(Debug, Clone, Default)]
pub struct AdminGroup(Option<String>);

impl AdminGroup {
    /// Members of `group` (primary or supplementary) are admins on the unix socket.
    pub fn new(group: Option<String>) -> Self {
        AdminGroup(group)
    }

    /// Checks that the group exists, so that a typo fails at start-up.
    pub fn check(&self) -> Result<(), String> {
        let Some(name) = &self.0 else { return Ok(()) };
        match nix::unistd::Group::from_name(name) {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(format!("--admin-group {name:?}: no such group")),
            Err(e) => Err(format!("--admin-group {name:?}: {e}")),
        }
    }

    fn contains(&self, uid: u32) -> bool {
        let Some(name) = &self.0 else { return false };
        let Ok(Some(group)) = nix::unistd::Group::from_name(name) else {
            return false;
        };
        let Ok(Some(user)) = nix::unistd::User::from_uid(uid.into()) else {
            return false;
        };
        user.gid == group.gid || group.mem.contains(&user.name)
    }
}

/// Resolves credentials to callers and announces revocations.
#[derive(Debug)]
pub struct Registry {
    index: RwLock<Index>,
    tokens: Tokens,
    admin_group: AdminGroup,
    own_uid: u32,
    revoked: broadcast::Sender<String>,
}

impl Registry {
    /// A registry over the token file's lines and `admin_group`; fill it with [`Registry::follow`].
    pub fn new(tokens: Tokens, admin_group: AdminGroup) -> Arc<Registry> {
        Arc::new(Registry {
            index: RwLock::default(),
            tokens,
            admin_group,
            own_uid: nix::unistd::geteuid().as_raw(),
            revoked: broadcast::channel(64).0,
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The caller behind a unix-socket peer: corrald's user, root and members of the admin
    /// group are admins; other users only as an identity names them.
    pub fn unix(&self, uid: u32, pid: Option<i32>) -> Result<Caller, String> {
        let name = match pid {
            Some(pid) => format!("unix:uid={uid},pid={pid}"),
            None => format!("unix:uid={uid}"),
        };
        if uid == 0 || uid == self.own_uid || self.admin_group.contains(uid) {
            return Ok(Caller::admin(name));
        }
        match self.read().uids.get(&uid) {
            Some(id) => Ok(Caller::of(id)),
            None => Err(format!(
                "local user {uid} is not an identity: an admin adds one with \
                 `corral auth unix add NAME --uid {uid} --role viewer`"
            )),
        }
    }

    /// The caller a bearer token identifies: a stored identity, else a line of the token file.
    pub fn token(&self, token: &str) -> Option<Caller> {
        // Hashing first makes the lookup independent of how much of a token matches.
        let hash = blake3::hash(token.as_bytes());
        if let Some(id) = self.read().tokens.get(hash.to_hex().as_str()) {
            return Some(Caller::of(id));
        }
        let scopes = self.tokens.scopes(&hash)?;
        Some(Caller {
            name: format!("token:{}", &hash.to_hex()[..8]),
            identity: None,
            principal: Principal {
                role: scopes.role(),
                memory: scopes.memory,
                projects: Vec::new(),
            },
            node: None,
        })
    }

    /// The name of the revoked identity `token` belonged to, if it did.
    pub fn revoked_token(&self, token: &str) -> Option<String> {
        let hash = blake3::hash(token.as_bytes());
        self.read()
            .revoked_tokens
            .get(hash.to_hex().as_str())
            .cloned()
    }

    /// The caller a TLS client certificate (its SHA-256, hex) identifies.
    pub fn cert(&self, sha256: &str) -> Option<Caller> {
        self.read().certs.get(sha256).map(|id| Caller::of(id))
    }

    /// Whether identity `name` is in force.
    pub fn holds(&self, name: &str) -> bool {
        self.read().names.contains_key(name)
    }

    /// Forgets identity `name`, last written at store revision `version`, at once and closes
    /// its streams (the watch would, a moment later).
    pub fn revoke(&self, name: &str, version: u64) {
        let removed = {
            let mut index = self.write();
            let at = index.revoked.entry(name.to_owned()).or_default();
            *at = (*at).max(version);
            index.remove(name)
        };
        if removed {
            let _ = self.revoked.send(name.to_owned());
        }
    }

    /// Resolves when `caller`'s identity is revoked; never for callers without one (local
    /// admins, token-file lines: those are revoked by restarting with another file).
    pub fn revoked(self: &Arc<Self>, caller: &Caller) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.revoked.subscribe();
        let me = self.clone();
        let name = caller.identity.clone();
        async move {
            let Some(name) = name else {
                return std::future::pending().await;
            };
            // Subscribed first, then checked: a revocation in between is not missed.
            if !me.holds(&name) {
                return;
            }
            loop {
                match rx.recv().await {
                    Ok(gone) if gone == name => return,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if !me.holds(&name) {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        return std::future::pending().await;
                    }
                }
            }
        }
    }

    /// Loads every identity; then, in the background, follows changes until `stop`.
    pub async fn follow(
        self: &Arc<Self>,
        ids: IdentityService,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), ServiceError> {
        let revision = self.reload(&ids).await?;
        let me = self.clone();
        tokio::spawn(async move { me.watch(ids, revision, stop).await });
        Ok(())
    }

    /// Replaces the index with the store's identities; returns the store revision.
    async fn reload(&self, ids: &IdentityService) -> Result<u64, ServiceError> {
        let (items, revision) = ids.list("").await?;
        let gone: Vec<String> = {
            let mut current = self.write();
            let mut index = Index {
                revoked: std::mem::take(&mut current.revoked),
                revoked_tokens: std::mem::take(&mut current.revoked_tokens),
                ..Index::default()
            };
            for id in items {
                index.insert(id);
            }
            let gone = current
                .names
                .keys()
                .filter(|n| !index.names.contains_key(*n))
                .cloned()
                .collect();
            *current = index;
            gone
        };
        for name in gone {
            let _ = self.revoked.send(name);
        }
        Ok(revision)
    }

    async fn watch(
        &self,
        ids: IdentityService,
        revision: u64,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut from = revision;
        loop {
            let mut watch = match ids.watch(None, from).await {
                Ok(watch) => watch,
                Err(e) => {
                    tracing::warn!(error = %e, "watching identities; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            loop {
                let event = tokio::select! {
                    event = watch.recv() => event,
                    _ = stop.wait_for(|s| *s) => return,
                };
                match event {
                    Some(Ok(event)) => {
                        let name = event.object.metadata.name.to_string();
                        match event.event {
                            EventType::Deleted => {
                                self.revoke(&name, event.object.metadata.resource_version)
                            }
                            EventType::Added | EventType::Modified => {
                                self.write().insert(event.object);
                            }
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "identity watch broke; reloading");
                        break;
                    }
                    None => break,
                }
            }
            // The watch may have missed changes: start again from a fresh list.
            loop {
                match self.reload(&ids).await {
                    Ok(r) => {
                        from = r;
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reloading identities; retrying");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use corral_contract::{IdentitySpec, Role};

    use super::*;

    fn identity(name: &str, credential: Credential, version: u64) -> Identity {
        let mut id = Identity::new(
            name.parse().unwrap(),
            IdentitySpec {
                role: Role::Viewer,
                memory: false,
                projects: vec![],
                credential,
            },
        );
        id.metadata.resource_version = version;
        id
    }

    #[tokio::test]
    async fn local_users_are_admins_or_named_by_an_identity_and_revocation_sticks() {
        let registry = Registry::new(Tokens::default(), AdminGroup::default());
        let own = nix::unistd::geteuid().as_raw();
        assert!(registry.unix(own, Some(1)).unwrap().is_admin());
        assert!(registry.unix(0, None).unwrap().is_admin());
        let stranger = 4_000_000_000;
        let err = registry.unix(stranger, None).unwrap_err();
        assert!(
            err.contains("not an identity") && err.contains("--uid 4000000000"),
            "{err}"
        );

        registry
            .write()
            .insert(identity("alice", Credential::Unix { uid: stranger }, 5));
        let alice = registry.unix(stranger, None).unwrap();
        assert_eq!(alice.name, "identity:alice");
        assert!(!alice.is_admin());

        let ended = registry.revoked(&alice);
        registry.revoke("alice", 6);
        tokio::time::timeout(std::time::Duration::from_secs(5), ended)
            .await
            .expect("the revocation reaches the caller's streams");
        assert!(registry.unix(stranger, None).is_err());
        // A lagging watch's older event does not bring it back; a new identity does.
        registry
            .write()
            .insert(identity("alice", Credential::Unix { uid: stranger }, 5));
        assert!(registry.unix(stranger, None).is_err());
        registry
            .write()
            .insert(identity("alice", Credential::Unix { uid: stranger }, 9));
        assert!(registry.unix(stranger, None).is_ok());
        // A caller already revoked when its stream starts ends at once.
        registry.revoke("alice", 9);
        tokio::time::timeout(std::time::Duration::from_secs(5), registry.revoked(&alice))
            .await
            .expect("already revoked");
    }
}
