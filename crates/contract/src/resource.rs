use serde::{Deserialize, Serialize};

use crate::choice::choice;
use crate::{
    Identity, Image, Network, Node, ObjectMeta, Project, Snapshot, Source, ValidationError, Vm,
    Volume,
};

choice! {
    /// The kind of a resource, as written in the `kind` field of a manifest.
    pub enum Kind ("kind") {
        /// A virtual machine: [`Vm`].
        Vm => "Vm",
        /// Content-addressed bytes: [`Image`].
        Image => "Image",
        /// A block device for VMs: [`Volume`].
        Volume => "Volume",
        /// A point-in-time state of a VM: [`Snapshot`].
        Snapshot => "Snapshot",
        /// A network VMs join: [`Network`].
        Network => "Network",
        /// A caller of the API and its rights: [`Identity`].
        Identity => "Identity",
        /// What owns objects, and their limits: [`Project`].
        Project => "Project",
        /// A Git repository of manifests corrald applies: [`Source`].
        Source => "Source",
        /// A host that runs VMs: [`Node`].
        Node => "Node",
    }
}

impl Kind {
    /// Whether objects of this kind belong to a project (`metadata.project`); identities,
    /// projects and nodes are the cluster's own and belong to none.
    pub fn in_project(self) -> bool {
        !matches!(self, Kind::Identity | Kind::Project | Kind::Node)
    }
}

/// What every kind of resource has: metadata, a validated spec and a status.
pub trait Object {
    /// The kind, as written in manifests.
    const KIND: Kind;

    /// The resource's metadata.
    fn metadata(&self) -> &ObjectMeta;

    /// The resource's metadata, for the server to stamp uid, versions and times.
    fn metadata_mut(&mut self) -> &mut ObjectMeta;

    /// Checks metadata and spec (deserialisation already does; this is for values built or
    /// changed in Rust).
    fn validate(&self) -> Result<(), ValidationError>;

    /// Whether objects of other projects may refer to it (see [`ImageSpec::shared`](crate::ImageSpec::shared)).
    fn shared(&self) -> bool {
        false
    }
}

/// Any resource, with its kind: the form of manifests and of API output.
///
/// Serialises as `{"kind": "Vm", "metadata": …, "spec": …, "status": …}`; a manifest holding
/// several resources parses as a list of these. `status` may be left out on input. When a
/// user writes a resource, the server keeps its own status and ignores the one given (as
/// Kubernetes does), so the output of a read can be applied again unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind")]
// A resource is built once per request or manifest document, never stored in bulk, so the
// size difference between kinds costs nothing worth boxing for.
#[allow(clippy::large_enum_variant)]
pub enum Resource {
    /// A virtual machine.
    Vm(Vm),
    /// An image.
    Image(Image),
    /// A volume.
    Volume(Volume),
    /// A snapshot.
    Snapshot(Snapshot),
    /// A network.
    Network(Network),
    /// An identity.
    Identity(Identity),
    /// A project.
    Project(Project),
    /// A Git source.
    Source(Source),
    /// A node.
    Node(Node),
}

/// `$r` bound to the inner object of any variant.
impl utoipa::PartialSchema for Resource {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{OneOfBuilder, Ref};
        Kind::ALL
            .iter()
            .fold(OneOfBuilder::new(), |one_of, k| {
                one_of.item(Ref::from_schema_name(k.as_str()))
            })
            .description(Some("Any resource, with its kind"))
            .into()
    }
}

impl utoipa::ToSchema for Resource {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        crate::schema::add::<Vm>(schemas);
        crate::schema::add::<Image>(schemas);
        crate::schema::add::<Volume>(schemas);
        crate::schema::add::<Snapshot>(schemas);
        crate::schema::add::<Network>(schemas);
        crate::schema::add::<Identity>(schemas);
        crate::schema::add::<Project>(schemas);
        crate::schema::add::<Node>(schemas);
    }
}

/// `Deserialize` for a kind's object through [`Strict`](crate::Strict): whatever deserializer
/// reads it (JSON, YAML, serde's buffered content for [`Resource`]), no struct inside is taken
/// from an array. Its schema is the object as the API reads and writes it, with `kind`.
macro_rules! strict_object {
    ($($ty:ident($spec:ty, $status:ty)),* $(,)?) => {$(
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Body {
                    metadata: ObjectMeta,
                    spec: $spec,
                    #[serde(default)]
                    status: $status,
                }
                let Body { metadata, spec, status } = Body::deserialize(crate::Strict::new(d))?;
                Ok($ty { metadata, spec, status })
            }
        }

        impl utoipa::PartialSchema for $ty {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                crate::schema::kind_object::<$spec, $status>(Kind::$ty)
            }
        }

        impl utoipa::ToSchema for $ty {
            fn schemas(
                schemas: &mut Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>)>,
            ) {
                crate::schema::add::<ObjectMeta>(schemas);
                crate::schema::add::<$spec>(schemas);
                crate::schema::add::<$status>(schemas);
            }
        }
    )*};
}

strict_object!(
    Vm(crate::VmSpec, crate::VmStatus),
    Network(crate::NetworkSpec, crate::NetworkStatus),
    Image(crate::ImageSpec, crate::ImageStatus),
    Volume(crate::VolumeSpec, crate::VolumeStatus),
    Snapshot(crate::SnapshotSpec, crate::SnapshotStatus),
    Identity(crate::IdentitySpec, crate::IdentityStatus),
    Project(crate::ProjectSpec, crate::ProjectStatus),
    Source(crate::SourceSpec, crate::SourceStatus),
    Node(crate::NodeSpec, crate::NodeStatus),
);

macro_rules! each {
    ($value:expr, $r:ident => $body:expr) => {
        match $value {
            Resource::Vm($r) => $body,
            Resource::Image($r) => $body,
            Resource::Volume($r) => $body,
            Resource::Snapshot($r) => $body,
            Resource::Network($r) => $body,
            Resource::Identity($r) => $body,
            Resource::Project($r) => $body,
            Resource::Source($r) => $body,
            Resource::Node($r) => $body,
        }
    };
}

impl Resource {
    /// Its kind.
    pub fn kind(&self) -> Kind {
        match self {
            Resource::Vm(_) => Vm::KIND,
            Resource::Image(_) => Image::KIND,
            Resource::Volume(_) => Volume::KIND,
            Resource::Snapshot(_) => Snapshot::KIND,
            Resource::Network(_) => Network::KIND,
            Resource::Identity(_) => Identity::KIND,
            Resource::Project(_) => Project::KIND,
            Resource::Source(_) => Source::KIND,
            Resource::Node(_) => Node::KIND,
        }
    }

    /// Its metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        each!(self, r => r.metadata())
    }

    /// Its metadata, mutably.
    pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
        each!(self, r => r.metadata_mut())
    }

    /// Checks metadata and spec.
    pub fn validate(&self) -> Result<(), ValidationError> {
        each!(self, r => r.validate())
    }

    /// The VM, if it is one.
    pub fn as_vm(&self) -> Option<&Vm> {
        match self {
            Resource::Vm(vm) => Some(vm),
            _ => None,
        }
    }

    /// The VM, if it is one.
    pub fn into_vm(self) -> Option<Vm> {
        match self {
            Resource::Vm(vm) => Some(vm),
            _ => None,
        }
    }

    /// The network, if it is one.
    pub fn into_network(self) -> Option<Network> {
        match self {
            Resource::Network(net) => Some(net),
            _ => None,
        }
    }
}

impl From<Network> for Resource {
    fn from(net: Network) -> Self {
        Resource::Network(net)
    }
}

macro_rules! from_object {
    ($($ty:ident),*) => {$(
        impl From<$ty> for Resource {
            fn from(r: $ty) -> Self {
                Resource::$ty(r)
            }
        }
    )*};
}
from_object!(Vm, Image, Volume, Snapshot, Identity, Project, Source, Node);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_words() {
        assert_eq!("Vm".parse::<Kind>().unwrap(), Kind::Vm);
        let err = "vm".parse::<Kind>().unwrap_err();
        assert_eq!(
            err.to_string(),
            r#""vm" is not a valid kind: use Vm, Image, Volume, Snapshot, Network, Identity, Project, Source or Node"#
        );
    }

    #[test]
    fn unknown_or_missing_kind_is_an_error() {
        let err = serde_json::from_str::<Resource>(r#"{"kind": "Vol", "metadata": {}}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "unknown variant `Vol`, expected one of `Vm`, `Image`, `Volume`, `Snapshot`, `Network`, `Identity`, `Project`, `Source`, `Node`"
            ),
            "{err}"
        );
        let err = serde_json::from_str::<Resource>(r#"{"metadata": {"name": "a"}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field `kind`"), "{err}");
    }
}
