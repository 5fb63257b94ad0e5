//! `ApplyRequest`/`ApplyReport` to and from their messages.

use super::{self as pb, declared_resource::Resource as Declared};
use crate::{
    ApplyAction, ApplyItem, ApplyReport, ApplyRequest, FieldChange, Image, Kind, Network, Resource,
    Snapshot, ValidationError, Vm, Volume,
};

impl From<&ApplyRequest> for pb::ApplyRequest {
    fn from(r: &ApplyRequest) -> Self {
        let resources = r
            .resources
            .iter()
            .filter_map(|r| {
                let resource = match r {
                    Resource::Vm(vm) => Declared::Vm(pb::Vm::from(vm)),
                    Resource::Network(n) => Declared::Network(pb::Network::from(n)),
                    Resource::Image(i) => Declared::Image(pb::Image::from(i)),
                    Resource::Volume(v) => Declared::Volume(pb::Volume::from(v)),
                    Resource::Snapshot(s) => Declared::Snapshot(pb::Snapshot::from(s)),
                    // Not applied (the server refuses them): nothing to send.
                    Resource::Identity(_)
                    | Resource::Project(_)
                    | Resource::Source(_)
                    | Resource::Node(_) => {
                        return None;
                    }
                };
                Some(pb::DeclaredResource {
                    resource: Some(resource),
                })
            })
            .collect();
        pb::ApplyRequest {
            owner: r
                .owner
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            prune: r.prune,
            allow_mass_prune: r.allow_mass_prune,
            dry_run: r.dry_run,
            resources,
        }
    }
}

impl TryFrom<pb::ApplyRequest> for ApplyRequest {
    type Error = ValidationError;

    fn try_from(r: pb::ApplyRequest) -> Result<Self, Self::Error> {
        let owner = if r.owner.is_empty() {
            None
        } else {
            Some(
                r.owner
                    .parse()
                    .map_err(|e| ValidationError::new("owner", e))?,
            )
        };
        let mut resources = Vec::with_capacity(r.resources.len());
        for (i, d) in r.resources.into_iter().enumerate() {
            let at = |e: ValidationError| ValidationError::new(format!("resources[{i}]"), e);
            let resource = match d.resource {
                Some(Declared::Vm(vm)) => Resource::Vm(Vm::try_from(vm).map_err(at)?),
                Some(Declared::Network(n)) => Resource::Network(Network::try_from(n).map_err(at)?),
                Some(Declared::Image(img)) => Resource::Image(Image::try_from(img).map_err(at)?),
                Some(Declared::Volume(v)) => Resource::Volume(Volume::try_from(v).map_err(at)?),
                Some(Declared::Snapshot(s)) => {
                    Resource::Snapshot(Snapshot::try_from(s).map_err(at)?)
                }
                None => {
                    return Err(ValidationError::new(
                        format!("resources[{i}]"),
                        "empty: set one of vm, network, image, volume, snapshot",
                    ));
                }
            };
            resources.push(resource);
        }
        Ok(ApplyRequest {
            owner,
            prune: r.prune,
            allow_mass_prune: r.allow_mass_prune,
            dry_run: r.dry_run,
            resources,
        })
    }
}

fn action_to_pb(a: ApplyAction) -> pb::ApplyAction {
    match a {
        ApplyAction::Create => pb::ApplyAction::Create,
        ApplyAction::Change => pb::ApplyAction::Change,
        ApplyAction::Unchanged => pb::ApplyAction::Unchanged,
        ApplyAction::Prune => pb::ApplyAction::Prune,
    }
}

impl From<&ApplyReport> for pb::ApplyResponse {
    fn from(r: &ApplyReport) -> Self {
        let json = |v: &Option<serde_json::Value>| v.as_ref().map(ToString::to_string);
        pb::ApplyResponse {
            dry_run: r.dry_run,
            items: r
                .items
                .iter()
                .map(|i| pb::ApplyItem {
                    kind: i.kind.as_str().to_owned(),
                    name: i.name.clone(),
                    action: action_to_pb(i.action).into(),
                    changes: i
                        .changes
                        .iter()
                        .map(|c| pb::FieldChange {
                            path: c.path.clone(),
                            before_json: json(&c.before),
                            after_json: json(&c.after),
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

impl TryFrom<pb::ApplyResponse> for ApplyReport {
    type Error = ValidationError;

    fn try_from(r: pb::ApplyResponse) -> Result<Self, Self::Error> {
        let mut items = Vec::with_capacity(r.items.len());
        for (i, item) in r.items.into_iter().enumerate() {
            let field = |f: &str| format!("items[{i}].{f}");
            let kind: Kind = item
                .kind
                .parse()
                .map_err(|e| ValidationError::new(field("kind"), e))?;
            let action = match pb::ApplyAction::try_from(item.action) {
                Ok(pb::ApplyAction::Create) => ApplyAction::Create,
                Ok(pb::ApplyAction::Change) => ApplyAction::Change,
                Ok(pb::ApplyAction::Unchanged) => ApplyAction::Unchanged,
                Ok(pb::ApplyAction::Prune) => ApplyAction::Prune,
                _ => return Err(ValidationError::new(field("action"), "not an action")),
            };
            let json = |v: Option<String>| -> Result<Option<serde_json::Value>, ValidationError> {
                v.map(|t| serde_json::from_str(&t))
                    .transpose()
                    .map_err(|e| ValidationError::new(field("changes"), e))
            };
            let mut changes = Vec::with_capacity(item.changes.len());
            for c in item.changes {
                changes.push(FieldChange {
                    path: c.path,
                    before: json(c.before_json)?,
                    after: json(c.after_json)?,
                });
            }
            items.push(ApplyItem {
                kind,
                name: item.name,
                action,
                changes,
            });
        }
        Ok(ApplyReport {
            dry_run: r.dry_run,
            items,
        })
    }
}
