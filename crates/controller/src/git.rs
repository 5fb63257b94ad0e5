//! Fetching a Git repository in process (gix, git:// transport: no git binary, no shell) and
//! reading the manifests of one commit.

use std::path::Path;
use std::sync::atomic::AtomicBool;

/// A fetch or read that failed; the message names the repository and the ref.
#[derive(Debug, thiserror::Error)]
#[error("{url} ({reference}): {message}")]
pub struct GitError {
    /// The repository.
    pub url: String,
    /// The branch, tag or commit asked for.
    pub reference: String,
    /// What went wrong.
    pub message: String,
}

/// The manifests of one commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkout {
    /// The commit id (hex).
    pub commit: String,
    /// The commit's signature (its `gpgsig` header, armored) and the bytes it signs; `None`
    /// for an unsigned commit.
    pub signature: Option<(String, Vec<u8>)>,
    /// `.yaml`, `.yml` and `.json` files under the path, by their path in the repository, in
    /// name order, with their text.
    pub files: Vec<(String, String)>,
}

/// Fetches `reference` of `url` into the bare repository `cache` (made if missing; each
/// source has its own) and reads the manifests under `path` of the commit it names. Blocking:
/// run it off the async runtime.
pub fn fetch(url: &str, reference: &str, path: &str, cache: &Path) -> Result<Checkout, GitError> {
    let fail = |message: String| GitError {
        url: url.to_owned(),
        reference: reference.to_owned(),
        message,
    };
    let repo = if cache.join("HEAD").exists() {
        gix::open(cache).map_err(|e| fail(format!("opening the cache: {e}")))?
    } else {
        gix::init_bare(cache).map_err(|e| fail(format!("making the cache: {e}")))?
    };
    let remote = repo
        .remote_at(url)
        .map_err(|e| fail(e.to_string()))?
        .with_refspecs(
            // `+`: a force-push moves the branch back, and the source follows it.
            [
                "+refs/heads/*:refs/remotes/origin/*",
                "+refs/tags/*:refs/tags/*",
            ],
            gix::remote::Direction::Fetch,
        )
        .map_err(|e| fail(e.to_string()))?;
    let interrupt = AtomicBool::new(false);
    remote
        .connect(gix::remote::Direction::Fetch)
        .map_err(|e| fail(format!("connecting: {e}")))?
        .prepare_fetch(gix::progress::Discard, Default::default())
        .map_err(|e| fail(format!("listing refs: {e}")))?
        .receive(gix::progress::Discard, &interrupt)
        .map_err(|e| fail(format!("fetching: {e}")))?;
    let id = resolve(&repo, reference)
        .ok_or_else(|| fail("no such branch, tag or commit in the repository".into()))?;
    let commit = repo
        .find_commit(id)
        .map_err(|e| fail(format!("{id} is not a commit: {e}")))?;
    let signature = commit
        .signature()
        .map_err(|e| fail(format!("reading the signature of {id}: {e}")))?
        .map(|(sig, signed)| (sig.to_string(), signed.to_bstring().to_vec()));
    let mut tree = commit.tree().map_err(|e| fail(e.to_string()))?;
    let dir = path.trim_matches('/');
    if !dir.is_empty() {
        let entry = tree
            .lookup_entry_by_path(dir)
            .map_err(|e| fail(e.to_string()))?
            .ok_or_else(|| fail(format!("commit {id} has no directory {dir:?}")))?;
        tree = entry
            .object()
            .map_err(|e| fail(e.to_string()))?
            .try_into_tree()
            .map_err(|_| fail(format!("{dir:?} is a file, not a directory")))?;
    }
    let mut files = Vec::new();
    collect(&repo, &tree, dir, &mut files).map_err(fail)?;
    files.sort();
    Ok(Checkout {
        commit: id.to_string(),
        signature,
        files,
    })
}

/// Checks that `checkout`'s commit carries an SSH signature, in git's namespace, by one of
/// `keys` (authorized_keys lines). `Ok` names the key that signed; `Err` says why the commit
/// may not be applied.
pub fn verify(checkout: &Checkout, keys: &[String]) -> Result<String, String> {
    let commit = &checkout.commit;
    let Some((armored, signed)) = &checkout.signature else {
        return Err(format!(
            "commit {commit} is not signed; this source applies only commits signed by one of \
             its verify keys"
        ));
    };
    let signature = ssh_key::SshSig::from_pem(armored.as_bytes()).map_err(|_| {
        if armored.contains("BEGIN PGP SIGNATURE") {
            format!(
                "commit {commit} is signed with GPG; this source checks SSH signatures \
                 (git config gpg.format ssh)"
            )
        } else {
            format!("commit {commit}: its signature is not an SSH signature that can be read")
        }
    })?;
    let mut allowed = Vec::new();
    for (i, line) in keys.iter().enumerate() {
        let key = ssh_key::PublicKey::from_openssh(line)
            .map_err(|e| format!("spec.verify_keys[{i}]: not a public key: {e}"))?;
        allowed.push(key);
    }
    let signer = allowed
        .iter()
        .find(|k| k.key_data() == signature.public_key())
        .ok_or_else(|| {
            let fingerprint = ssh_key::PublicKey::from(signature.public_key().clone())
                .fingerprint(ssh_key::HashAlg::Sha256);
            format!(
                "commit {commit} is signed by {fingerprint}, which is not one of the source's \
                 verify keys"
            )
        })?;
    signer
        .verify(GIT_NAMESPACE, signed, &signature)
        .map_err(|e| format!("commit {commit}: its signature does not verify: {e}"))?;
    Ok(signer.fingerprint(ssh_key::HashAlg::Sha256).to_string())
}

/// The sshsig namespace git signs commits in.
const GIT_NAMESPACE: &str = "git";

/// A branch (as fetched), a tag, or a full commit id.
fn resolve(repo: &gix::Repository, reference: &str) -> Option<gix::ObjectId> {
    for name in [
        format!("refs/remotes/origin/{reference}"),
        format!("refs/tags/{reference}"),
    ] {
        if let Ok(Some(mut r)) = repo.try_find_reference(name.as_str()) {
            return r.peel_to_id().ok().map(|id| id.detach());
        }
    }
    let id = gix::ObjectId::from_hex(reference.as_bytes()).ok()?;
    repo.find_commit(id).ok().map(|c| c.id)
}

fn collect(
    repo: &gix::Repository,
    tree: &gix::Tree<'_>,
    prefix: &str,
    out: &mut Vec<(String, String)>,
) -> Result<(), String> {
    for entry in tree.iter() {
        let entry = entry.map_err(|e| e.to_string())?;
        let name = entry.filename().to_string();
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let object = repo.find_object(entry.oid()).map_err(|e| e.to_string())?;
        if entry.mode().is_tree() {
            let sub = object.try_into_tree().map_err(|e| e.to_string())?;
            collect(repo, &sub, &path, out)?;
        } else if entry.mode().is_blob()
            && [".yaml", ".yml", ".json"].iter().any(|e| name.ends_with(e))
        {
            let text = String::from_utf8(object.data.clone())
                .map_err(|_| format!("{path}: not UTF-8 text"))?;
            out.push((path, text));
        }
    }
    Ok(())
}
