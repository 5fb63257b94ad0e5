//! Waiting on corrald: following an object until it is where a step wants it, within the
//! resource's timeouts, and giving up when Terraform asks the provider to stop.

use std::marker::PhantomData;
use std::time::Duration;

use corral_client::{Client, ClientError};

use super::map::client_error;
use super::{Kind, Progress};
use crate::diag::Diagnostic;
use crate::resource::{Ctx, Outcome};
use crate::value::Value;

/// How often [`poll`] asks corrald again.
const POLL: Duration = Duration::from_millis(200);

/// [`Kind::follow`] by reading the object every [`POLL`].
pub(super) async fn poll<K: Kind>(
    client: &Client,
    name: &str,
    limit: Duration,
    done: &mut (dyn FnMut(Option<&K::Obj>) -> bool + Send),
) -> Result<bool, ClientError> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let current = match K::get(client, name).await {
            Ok(obj) => Some(obj),
            Err(ClientError::NotFound { .. }) => None,
            Err(e) => return Err(e),
        };
        if done(current.as_ref()) {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The phase a status reports, for messages.
fn phase_of<K: Kind>(obj: &K::Obj) -> Option<String> {
    let status = serde_json::to_value(obj).ok()?;
    status["status"]["phase"].as_str().map(str::to_owned)
}

/// Follows `name` until `check` says it got there (`Ready`) or will not (`Failed`), time
/// runs out or Terraform asks to stop. `check` sees `None` once the object is gone.
async fn wait<K: Kind>(
    ctx: &Ctx,
    name: &str,
    doing: &str,
    goal: &str,
    limit: Duration,
    check: impl Fn(Option<&K::Obj>) -> Progress + Send,
) -> Outcome<Option<K::Obj>> {
    let what = K::WHAT;
    let mut seen = None;
    let mut verdict = Progress::Pending;
    let (last, outcome) = (&mut seen, &mut verdict);
    let mut done = move |obj: Option<&K::Obj>| {
        *outcome = check(obj);
        *last = obj.cloned();
        *outcome != Progress::Pending
    };
    let mut stop = ctx.stop.clone();
    let followed = tokio::select! {
        followed = K::follow(&ctx.client, name, limit, &mut done) => followed,
        _ = stop.wait_for(|s| *s) => {
            return Err(vec![Diagnostic::error(
                "Interrupted",
                format!("Terraform asked the provider to stop while {doing} {what} {name:?}"),
            )]);
        }
    };
    match (followed, verdict) {
        (Err(e), _) => Err(client_error::<K>(
            &format!("Waiting for {what} {name:?}"),
            e,
        )),
        (Ok(true), Progress::Ready) => Ok(seen),
        (Ok(true), Progress::Failed(why)) => Err(vec![Diagnostic::error(
            format!("{what} {name:?} failed"),
            why,
        )]),
        (Ok(_), _) => {
            let phase = seen
                .as_ref()
                .and_then(phase_of::<K>)
                .map(|p| format!(" (phase {p})"))
                .unwrap_or_default();
            Err(vec![Diagnostic::error(
                format!("Timed out {doing} {what} {name:?}"),
                format!(
                    "timed out after {} waiting for it to be {goal}{phase}: raise the timeout \
                     in the resource's timeouts block",
                    humantime::format_duration(limit)
                ),
            )])
        }
    }
}

/// Waits until `check` says the object got to `goal`; its disappearance is a failure.
pub(super) async fn wait_until<K: Kind>(
    ctx: &Ctx,
    name: &str,
    doing: &str,
    goal: &str,
    limit: Duration,
    check: impl Fn(&K::Obj) -> Progress + Send,
) -> Outcome<K::Obj> {
    let gone = format!("it was deleted while waiting for it to be {goal}");
    let got = wait::<K>(ctx, name, doing, goal, limit, move |obj| match obj {
        None => Progress::Failed(gone.clone()),
        Some(obj) => check(obj),
    })
    .await?;
    got.ok_or_else(|| vec![Diagnostic::error(format!("{} vanished", K::WHAT), name)])
}

/// Asks for the deletion and waits until the object is gone.
pub(super) async fn delete_and_wait<K: Kind>(
    ctx: &Ctx,
    name: &str,
    limit: Duration,
) -> Outcome<()> {
    match K::delete(&ctx.client, name).await {
        Ok(()) | Err(ClientError::NotFound { .. }) => {}
        Err(e) => {
            return Err(client_error::<K>(
                &format!("Deleting {} {name:?}", K::WHAT),
                e,
            ));
        }
    }
    let gone = |obj: Option<&K::Obj>| match obj {
        None => Progress::Ready,
        Some(_) => Progress::Pending,
    };
    wait::<K>(ctx, name, "deleting", "gone", limit, gone)
        .await
        .map(drop)
}

/// What a [`Kind::update`] hook works with: the client, the object's name and prior state,
/// reads and waits bounded by the update timeout, and errors named for the update.
#[derive(Debug)]
pub struct Step<'a, K> {
    ctx: &'a Ctx,
    name: &'a str,
    prior: &'a Value,
    limit: Duration,
    kind: PhantomData<fn() -> K>,
}

impl<'a, K: Kind> Step<'a, K> {
    pub(super) fn new(ctx: &'a Ctx, name: &'a str, prior: &'a Value, limit: Duration) -> Self {
        Step {
            ctx,
            name,
            prior,
            limit,
            kind: PhantomData,
        }
    }

    /// The connection to corrald.
    pub fn client(&self) -> &Client {
        &self.ctx.client
    }

    /// The object's name.
    pub fn name(&self) -> &str {
        self.name
    }

    /// The state before the change.
    pub fn prior(&self) -> &Value {
        self.prior
    }

    /// How long each wait of this update may take.
    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// A client error of this update as diagnostics.
    pub fn failed(&self, err: ClientError) -> Vec<Diagnostic> {
        client_error::<K>(&format!("Updating {} {:?}", K::WHAT, self.name), err)
    }

    /// The object as corrald has it now.
    pub async fn get(&self) -> Outcome<K::Obj> {
        K::get(self.client(), self.name)
            .await
            .map_err(|e| self.failed(e))
    }

    /// Waits until `check` says the object got to `goal` (a state on the way, e.g. a VM
    /// stopped before its disks change).
    pub async fn until(
        &self,
        goal: &str,
        check: impl Fn(&K::Obj) -> Progress + Send,
    ) -> Outcome<K::Obj> {
        wait_until::<K>(self.ctx, self.name, "updating", goal, self.limit, check).await
    }
}
