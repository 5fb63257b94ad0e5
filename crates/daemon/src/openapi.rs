//! The OpenAPI 3.1 document of the REST API, served at `/openapi.json`, built at run time.
//!
//! Schemas come from the contract crate (`corral_contract::schema::components`, derived from
//! the types the parser uses); each operation is described here, keyed by its operation id, with
//! the parameters, bodies and answers its handler has. Nothing is written by hand in JSON.

mod history;
mod ui;

use std::sync::OnceLock;

use corral_contract::schema::{TRIMMED, components, uint};
use serde_json::json;
use utoipa::openapi::path::{
    HttpMethod, Operation, OperationBuilder, ParameterBuilder, ParameterIn, PathItem,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{
    AdditionalProperties, ArrayBuilder, ObjectBuilder, Ref, Schema, Type,
};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::server::{ServerBuilder, ServerVariableBuilder};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, PathsBuilder, RefOr,
    Required,
};

/// The most bytes one REST memory read returns (64 MiB).
const MAX_READ: u64 = crate::memory::rest::MAX_REST_READ;
/// The most bytes of console log one request returns (4 MiB).
const MAX_LOG: u64 = 4 << 20;

/// An operation id, its method and path, and what builds its description.
pub type Described = (&'static str, HttpMethod, &'static str, fn() -> Operation);

/// Every REST operation: its id, method and path, and how it is described. After the daemon's
/// route table carries the ids, the document is built by walking that table instead.
pub const OPERATIONS: &[Described] = {
    use HttpMethod::{Delete, Get, Post, Put};
    &[
        ("listVms", Get, "/v1/vms", || {
            list("Vm", "VMs, sorted by name")
        }),
        ("createVm", Post, "/v1/vms", || create("Vm")),
        ("getVm", Get, "/v1/vms/{name}", || get("Vm")),
        ("updateVm", Put, "/v1/vms/{name}", || update("Vm")),
        ("deleteVm", Delete, "/v1/vms/{name}", delete_vm),
        ("startVm", Post, "/v1/vms/{name}/start", || {
            power("Start the VM")
        }),
        ("stopVm", Post, "/v1/vms/{name}/stop", stop_vm),
        ("pauseVm", Post, "/v1/vms/{name}/pause", || {
            power("Pause the VM's vCPUs")
        }),
        ("resumeVm", Post, "/v1/vms/{name}/resume", || {
            power("Resume a paused VM")
        }),
        ("restartVm", Post, "/v1/vms/{name}/restart", || {
            power("Restart the VM")
        }),
        ("migrateVm", Post, "/v1/vms/{name}/migrate", migrate_vm),
        (
            "cancelVmMigration",
            Post,
            "/v1/vms/{name}/migrate/cancel",
            || power("Withdraw the VM's migration request: one not yet switched over is cancelled"),
        ),
        (
            "getVmMetricsHistory",
            Get,
            "/v1/vms/{name}/metrics/history",
            history::get_vm_metrics_history,
        ),
        (
            "getVmConsoleLog",
            Get,
            "/v1/vms/{name}/console/log",
            console_log,
        ),
        (
            "attachVmConsole",
            Get,
            "/v1/vms/{name}/console/ws",
            console_ws,
        ),
        ("openVmTunnel", Get, "/v1/vms/{name}/tunnel/ws", tunnel_ws),
        (
            "getVmAttestation",
            Get,
            "/v1/vms/{name}/attestation",
            attestation,
        ),
        ("readVmMemory", Get, "/v1/vms/{name}/memory", read_memory),
        (
            "findVmMemory",
            Get,
            "/v1/vms/{name}/memory/find",
            find_memory,
        ),
        (
            "snapshotVmMemory",
            Get,
            "/v1/vms/{name}/memory/snapshot",
            snapshot_memory,
        ),
        ("mapVmMemory", Get, "/v1/vms/{name}/memory/map", map_memory),
        (
            "streamVmMemory",
            Get,
            "/v1/vms/{name}/memory/stream",
            stream_memory,
        ),
        ("listImages", Get, "/v1/images", || {
            list("Image", "Images, sorted by name")
        }),
        ("createImage", Post, "/v1/images", || create("Image")),
        ("getImage", Get, "/v1/images/{name}", || get("Image")),
        ("deleteImage", Delete, "/v1/images/{name}", || {
            delete("Image", "200")
        }),
        (
            "verifyImage",
            Post,
            "/v1/images/{name}/verify",
            verify_image,
        ),
        ("uploadImage", Put, "/v1/images/{name}/upload", upload_image),
        ("listVolumes", Get, "/v1/volumes", || {
            list("Volume", "Volumes, sorted by name")
        }),
        ("createVolume", Post, "/v1/volumes", || create("Volume")),
        ("getVolume", Get, "/v1/volumes/{name}", || get("Volume")),
        ("updateVolume", Put, "/v1/volumes/{name}", || {
            update("Volume")
        }),
        ("deleteVolume", Delete, "/v1/volumes/{name}", || {
            delete("Volume", "202")
        }),
        ("listSnapshots", Get, "/v1/snapshots", list_snapshots),
        ("createSnapshot", Post, "/v1/snapshots", || {
            create("Snapshot")
        }),
        ("getSnapshot", Get, "/v1/snapshots/{name}", || {
            get("Snapshot")
        }),
        ("deleteSnapshot", Delete, "/v1/snapshots/{name}", || {
            delete("Snapshot", "202")
        }),
        (
            "restoreSnapshot",
            Post,
            "/v1/snapshots/{name}/restore",
            restore_snapshot,
        ),
        ("listNetworks", Get, "/v1/networks", || {
            list("Network", "Networks, sorted by name")
        }),
        ("createNetwork", Post, "/v1/networks", || create("Network")),
        ("getNetwork", Get, "/v1/networks/{name}", || get("Network")),
        ("deleteNetwork", Delete, "/v1/networks/{name}", || {
            delete("Network", "200")
        }),
        ("listIdentities", Get, "/v1/identities", || {
            list("Identity", "Identities, sorted by name (admin only)")
        }),
        ("createIdentity", Post, "/v1/identities", create_identity),
        ("revokeIdentity", Delete, "/v1/identities/{name}", || {
            delete("Identity", "200")
        }),
        ("listAudit", Get, "/v1/audit", list_audit),
        ("listProjects", Get, "/v1/projects", || {
            list("Project", "Projects, sorted by name")
        }),
        ("createProject", Post, "/v1/projects", || create("Project")),
        ("getProject", Get, "/v1/projects/{name}", || get("Project")),
        ("updateProject", Put, "/v1/projects/{name}", || {
            update("Project")
        }),
        ("deleteProject", Delete, "/v1/projects/{name}", || {
            delete("Project", "200")
        }),
        ("applyResources", Post, "/v1/apply", apply),
        ("listSources", Get, "/v1/sources", || {
            list("Source", "Git sources, sorted by name")
        }),
        ("createSource", Post, "/v1/sources", || create("Source")),
        ("getSource", Get, "/v1/sources/{name}", || get("Source")),
        ("updateSource", Put, "/v1/sources/{name}", || {
            update("Source")
        }),
        ("deleteSource", Delete, "/v1/sources/{name}", || {
            delete("Source", "200")
        }),
        (
            "reconcileSource",
            Post,
            "/v1/sources/{name}/reconcile",
            || source_verb("Fetch and apply the source now"),
        ),
        ("approveSource", Post, "/v1/sources/{name}/approve", || {
            source_verb("Let the next reconcile prune past the mass-prune guard, and run it now")
        }),
        ("redirectUi", Get, "/ui", ui::redirect_ui),
        ("getUi", Get, "/ui/", ui::get_ui),
        ("getUiAsset", Get, "/ui/assets/{file}", ui::get_ui_asset),
        ("openUiLink", Get, "/ui/login", ui::open_ui_link),
        ("loginUi", Post, "/ui/session", ui::login_ui),
        ("getUiSession", Get, "/ui/session", ui::get_ui_session),
        ("logoutUi", Delete, "/ui/session", ui::logout_ui),
        ("createUiLink", Post, "/v1/ui/links", ui::create_ui_link),
        (
            "createJoinToken",
            Post,
            "/v1/nodes/join-tokens",
            create_join_token,
        ),
        ("joinNode", Post, "/v1/nodes/join", join_node),
        (
            "callNodeStore",
            Post,
            "/v1/nodes/{name}/store",
            call_node_store,
        ),
        (
            "watchNodeStore",
            Get,
            "/v1/nodes/{name}/store/watch",
            watch_node_store,
        ),
        (
            "fetchNodeBlob",
            Get,
            "/v1/nodes/{name}/blobs/{digest}",
            fetch_node_blob,
        ),
        ("listNodes", Get, "/v1/nodes", || {
            list("Node", "Nodes of the cluster, sorted by name")
        }),
        ("getNode", Get, "/v1/nodes/{name}", || get("Node")),
        ("cordonNode", Post, "/v1/nodes/{name}/cordon", || {
            node_verb("Cordon the node: the scheduler places no new VM there")
        }),
        ("uncordonNode", Post, "/v1/nodes/{name}/uncordon", || {
            node_verb("Uncordon the node: the scheduler may place VMs there again")
        }),
        ("drainNode", Post, "/v1/nodes/{name}/drain", || {
            node_verb(
                "Cordon the node and move its VMs: running VMs move live; the others, and any \
                 that cannot move live, are stopped there and placed elsewhere",
            )
        }),
        ("getOpenApi", Get, "/openapi.json", openapi),
        ("getMetrics", Get, "/metrics", metrics),
        ("getHealth", Get, "/healthz", health),
    ]
};

/// The description of the operation `id`, if the API has it.
pub fn operation(id: &str) -> Option<Operation> {
    OPERATIONS
        .iter()
        .find(|(op, ..)| *op == id)
        .map(|(id, method, path, build)| {
            let mut op = build();
            op.operation_id = Some((*id).to_owned());
            if in_project(path) {
                let params = op.parameters.get_or_insert_with(Vec::new);
                params.push(query(
                    "project",
                    corral_contract::schema::name_schema(),
                    false,
                    "The project the request acts in (or the `corral-project` header); left \
                     out, the caller's only project, else `default`",
                ));
                if *method == HttpMethod::Get && !path.contains("{name}") {
                    params.push(query(
                        "all_projects",
                        boolean(),
                        false,
                        "List every project the caller works in (admins: all)",
                    ));
                }
            }
            op
        })
}

/// Whether the operations under `path` act on objects of a project.
fn in_project(path: &str) -> bool {
    [
        "vms",
        "images",
        "volumes",
        "snapshots",
        "networks",
        "attestations",
    ]
    .iter()
    .any(|kind| {
        path.strip_prefix("/v1/")
            .and_then(|rest| rest.strip_prefix(kind))
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// The document, as JSON text (built once).
pub fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        serde_json::to_string_pretty(&build()).expect("the OpenAPI document serialises")
    })
}

/// The document.
pub fn build() -> OpenApi {
    let mut paths = PathsBuilder::new();
    for (id, method, path, _) in OPERATIONS {
        let op = operation(id).expect("listed");
        paths = paths.path(*path, PathItem::new(method.clone(), op));
    }
    let mut schemas = ComponentsBuilder::new()
        .schemas_from_iter(components())
        .schema("Error", error_schema())
        .schema("ErrorCode", error_code_schema())
        .schema("VerifyResult", verify_result_schema())
        .schema("DsseEnvelope", dsse_schema())
        .security_scheme("bearerAuth", {
            let mut http = Http::new(HttpAuthScheme::Bearer);
            http.description = Some(
                "Applies on TCP only: every request to a --listen address needs Authorization: \
                 Bearer <token> with an identity's token (corral auth token create) or a token \
                 file line's (corrald hash-token), unless the client presents a certificate an \
                 identity names (mTLS, corral auth cert add); without one the answer is 401. On \
                 the unix socket the peer's user id identifies the caller."
                    .to_owned(),
            );
            SecurityScheme::Http(http)
        });
    schemas = schemas
        .schema("AuditRecord", audit_record_schema())
        .schema("AuditList", audit_list_schema())
        .schema("CreatedIdentity", created_identity_schema())
        .schema("JoinTokenRequest", join_token_request_schema())
        .schema("JoinToken", join_token_schema())
        .schema("JoinRequest", join_request_schema())
        .schema("Joined", joined_schema());
    for kind in [
        "Vm", "Image", "Volume", "Snapshot", "Network", "Identity", "Project", "Source", "Node",
    ] {
        let mut items = ObjectBuilder::new()
            .schema_type(Type::Object)
            .property(
                "items",
                ArrayBuilder::new().items(Ref::from_schema_name(kind)),
            )
            .required("items")
            .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)));
        items = items.property("revision", integer(0, None));
        // The store revision of the list, to watch from: every list has one but snapshots'.
        if kind != "Snapshot" {
            items = items.required("revision");
        }
        schemas = schemas.schema(format!("{kind}List"), items);
    }
    let tcp = ServerBuilder::new()
        .url("https://{host}:{port}")
        .description(Some(
            "TCP with TLS (corrald --listen ADDR --tls-cert --tls-key [--tls-client-ca] \
             [--token-file]): every request needs Authorization: Bearer <token> or a client \
             certificate an identity names. The unix socket (http://localhost over \
             $XDG_RUNTIME_DIR/corral/corral.sock) needs none: the peer's user id identifies it.",
        ))
        .parameter(
            "host",
            ServerVariableBuilder::new().default_value("localhost"),
        )
        .parameter("port", ServerVariableBuilder::new().default_value("7443"))
        .build();
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Corral API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "corrald's REST API. Every resource is {kind, metadata, spec, status}; \
                     errors are {\"error\": {\"code\", \"message\"}}. Generated from the code \
                     that serves it.",
                )),
        )
        .servers(Some([tcp]))
        .security(Some([
            SecurityRequirement::new("bearerAuth", Vec::<String>::new()),
            SecurityRequirement::default(),
        ]))
        .paths(paths)
        .components(Some(schemas.build()))
        .build()
}

// --- building blocks -------------------------------------------------------------------------

fn reference(name: &str) -> RefOr<Schema> {
    Ref::from_schema_name(name).into()
}

fn integer(min: u64, max: Option<u64>) -> ObjectBuilder {
    let max = max.unwrap_or(u64::MAX);
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(uint(min)))
        .maximum(Some(uint(max)))
}

fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

fn boolean() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::Boolean)
}

fn op(summary: &str) -> OperationBuilder {
    OperationBuilder::new().summary(Some(summary))
}

fn name_param() -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name("name")
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .description(Some("The resource's name (metadata.name)"))
        .schema(Some(corral_contract::schema::name_schema()))
        .build()
}

fn query(
    name: &str,
    schema: impl Into<RefOr<Schema>>,
    required: bool,
    description: &str,
) -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Query)
        .required(if required {
            Required::True
        } else {
            Required::False
        })
        .description(Some(description))
        .schema(Some(schema))
        .build()
}

fn json_response(description: &str, schema: RefOr<Schema>) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new().schema(Some(schema)).build(),
        )
        .build()
}

fn raw_response(description: &str, media: &str, schema: ObjectBuilder) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(media, ContentBuilder::new().schema(Some(schema)).build())
        .build()
}

fn error(description: &str) -> Response {
    json_response(description, reference("Error"))
}

/// The answers every operation can give: no or a wrong token, a failing store.
fn common(op: OperationBuilder) -> OperationBuilder {
    op.response(
        "401",
        error(
            "The caller is not an identity: on TCP no accepted client certificate or \
             Authorization: Bearer <token>, on the unix socket a local user no identity names; \
             or its identity was revoked",
        ),
    )
    .response(
        "403",
        error("The caller's role or grants do not allow this operation (host resources such as bridge networks and host files are for admins)"),
    )
    .response("503", error("The store failed"))
}

fn body(kind: &str) -> utoipa::openapi::request_body::RequestBody {
    RequestBodyBuilder::new()
        .required(Some(Required::True))
        .description(Some(format!(
            "The {kind} as JSON (at most 2 MiB); status is ignored"
        )))
        .content(
            "application/json",
            ContentBuilder::new().schema(Some(reference(kind))).build(),
        )
        .build()
}

fn bad_body() -> Response {
    error(
        "The body is not a valid resource of this kind (InvalidArgument); the message names the \
         field, e.g. spec: expected an object, got an array",
    )
}

/// A label selector as the store parses it: comma-separated requirements, each trimmed.
fn selector_pattern() -> String {
    let (key, value, s) = ("[-A-Za-z0-9._/]+", "[-A-Za-z0-9._]*", TRIMMED);
    let term = format!("{s}(!?{s}{key}|{key}{s}(!=|==|=){s}{value}){s}");
    format!("^({s}|{term}(,{term})*)$")
}

fn label_selector() -> utoipa::openapi::path::Parameter {
    query(
        "labelSelector",
        string().pattern(Some(selector_pattern())),
        false,
        "Comma-separated label requirements that all must hold: key=value (or key==value), \
         key!=value, key (set) and !key (not set), e.g. tier=web,!spot. A selector that does not \
         parse is answered with 400.",
    )
}

// --- operations --------------------------------------------------------------------------------

fn list(kind: &str, summary: &str) -> Operation {
    watchable(
        common(op(summary)).parameter(label_selector()),
        kind,
        summary,
    )
    .response(
        "400",
        error(
            "The label selector or query string does not parse, or labelSelector was \
                 given with watch=true",
        ),
    )
    .build()
}

/// A list's answer, and with `watch=true` its stream of changes (see `api/watch.rs`).
fn watchable(op: OperationBuilder, kind: &str, summary: &str) -> OperationBuilder {
    let list = ContentBuilder::new()
        .schema(Some(reference(&format!("{kind}List"))))
        .build();
    let events = ContentBuilder::new().schema(Some(string().description(Some(
        "Server-Sent Events. Each event's id is its store revision and its data one JSON \
         object: {\"type\": \"ADDED\"|\"MODIFIED\"|\"DELETED\", \"revision\", \"object\"}; \
         {\"type\": \"BOOKMARK\", \"revision\"} after the current objects (sent as ADDED when \
         no resourceVersion is given); {\"type\": \"ERROR\", \"code\", \"message\"} as the \
         last event when the stream ends (code Gone: list again). Idle streams carry a comment \
         line every 15 s.",
    ))));
    let ok = ResponseBuilder::new()
        .description(format!(
            "{summary}, as JSON; with watch=true, text/event-stream of the changes"
        ))
        .content("application/json", list)
        .content("text/event-stream", events.build())
        .build();
    op.parameter(query(
        "watch",
        boolean(),
        false,
        "true: answer with Server-Sent Events of every change, in the caller's projects, \
         until the client disconnects",
    ))
    .parameter(query(
        "resourceVersion",
        integer(0, None),
        false,
        "With watch=true: only the changes after this store revision (a list's revision or \
         an event's id); without it the stream starts with the current objects. A list \
         ignores it",
    ))
    .parameter(
        ParameterBuilder::new()
            .name("Last-Event-ID")
            .parameter_in(ParameterIn::Header)
            .required(Required::False)
            .description(Some(
                "With watch=true: the id of the last event seen (an EventSource sends it when \
                 it reconnects); wins over resourceVersion",
            ))
            .schema(Some(integer(0, None)))
            .build(),
    )
    .response("200", ok)
    .response(
        "410",
        error(
            "With watch=true: the history after resourceVersion was compacted (Gone): list \
             again and watch from the list's revision",
        ),
    )
}

fn create(kind: &str) -> Operation {
    common(op(&format!("Create a {kind}")))
        .request_body(Some(body(kind)))
        .response("201", json_response("Created", reference(kind)))
        .response("400", bad_body())
        .response("404", error("A resource the spec names does not exist"))
        .response("409", error("A resource of this kind and name exists"))
        .response(
            "412",
            error("The spec does not fit what exists (FailedPrecondition)"),
        )
        .response("413", error("The body is larger than 4 MiB"))
        .response("415", error("The body is not declared as application/json"))
        .build()
}

fn source_verb(summary: &str) -> Operation {
    common(op(summary))
        .parameter(name_param())
        .response("200", json_response("Asked", reference("Source")))
        .response("400", error("The name is not a valid name"))
        .response("404", error("No source of that name"))
        .response("409", error("The source kept changing: retry"))
        .response(
            "412",
            error("The source is being deleted (FailedPrecondition)"),
        )
        .build()
}

fn node_verb(summary: &str) -> Operation {
    common(op(summary))
        .parameter(name_param())
        .response("200", json_response("The node", reference("Node")))
        .response("400", error("The name is not a valid name"))
        .response("404", error("No node of that name"))
        .response("409", error("The node kept changing: retry"))
        .build()
}

fn apply() -> Operation {
    common(op(
        "Apply declared resources as one owner: create or change each (through the same \
         admission as create and update), prune the owner's undeclared ones; with dryRun, only \
         report what would happen",
    ))
    .parameter(query(
        "dryRun",
        boolean(),
        false,
        "Plan only: every check runs, nothing is written (like dry_run in the body)",
    ))
    .request_body(Some(
        RequestBodyBuilder::new()
            .required(Some(Required::True))
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(reference("ApplyRequest")))
                    .build(),
            )
            .build(),
    ))
    .response(
        "200",
        json_response(
            "What was (or would be) done to each resource",
            reference("ApplyReport"),
        ),
    )
    .response("400", bad_body())
    .response(
        "403",
        error("A resource needs host access the caller lacks (PermissionDenied)"),
    )
    .response(
        "412",
        error(
            "A resource is another owner's, cannot change that way, or the prune would remove \
             more than half of the owner's resources (FailedPrecondition)",
        ),
    )
    .response("413", error("The body is larger than 2 MiB"))
    .response("415", error("The body is not declared as application/json"))
    .build()
}

fn create_identity() -> Operation {
    common(op(
        "Add an identity (admin only); for a token credential without a hash, the server makes \
         the token and returns it once",
    ))
    .request_body(Some(body("Identity")))
    .response(
        "201",
        json_response("Created", reference("CreatedIdentity")),
    )
    .response("400", bad_body())
    .response("409", error("An identity of this name exists"))
    .response(
        "412",
        error("Another identity has this credential (FailedPrecondition)"),
    )
    .response("413", error("The body is larger than 2 MiB"))
    .response("415", error("The body is not declared as application/json"))
    .build()
}

fn json_body(schema: &str, description: &str) -> utoipa::openapi::request_body::RequestBody {
    RequestBodyBuilder::new()
        .required(Some(Required::True))
        .description(Some(description))
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(reference(schema)))
                .build(),
        )
        .build()
}

fn create_join_token() -> Operation {
    common(op(
        "Mint a single-use token an agent joins the cluster with (admin only); shown only here",
    ))
    .request_body(Some(
        RequestBodyBuilder::new()
            .required(Some(Required::False))
            .description(Some("How long the token is accepted (empty body: 1h)"))
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(reference("JoinTokenRequest")))
                    .build(),
            )
            .build(),
    ))
    .response("201", json_response("The token", reference("JoinToken")))
    .response(
        "412",
        error("This server has no cluster CA (FailedPrecondition)"),
    )
    .response(
        "400",
        error("The body or ttl is invalid (ttl: more than 0, at most 7 days)"),
    )
    .build()
}

fn join_node() -> Operation {
    op(
        "Join the cluster as a node: a join token and a certificate signing request for a key \
         the agent keeps; answers the node certificate and the cluster CA. Needs no other \
         credential; the token is spent.",
    )
    .request_body(Some(json_body(
        "JoinRequest",
        "The token, the node's name and the CSR",
    )))
    .response(
        "200",
        json_response(
            "The node certificate and the cluster CA",
            reference("Joined"),
        ),
    )
    .response("400", error("The token, node name or CSR is malformed"))
    .response("403", error("The token is unknown, expired or used"))
    .response(
        "412",
        error("This server has no cluster CA (FailedPrecondition)"),
    )
    .response("503", error("The store failed"))
    .build()
}

fn free_object() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(true)))
}

fn call_node_store() -> Operation {
    common(op(
        "One store call of the node's agent (get, list, create, update, delete, revision) \
         within what a node may see and change: its Node, the VMs bound to it and what they \
         reference; only its node certificate (or an admin) may",
    ))
    .parameter(name_param())
    .request_body(Some(
        RequestBodyBuilder::new()
            .required(Some(Required::True))
            .description(Some(
                "The call: {\"op\": \"get\", \"kind\": …, \"name\": …} …",
            ))
            .content(
                "application/json",
                ContentBuilder::new().schema(Some(free_object())).build(),
            )
            .build(),
    ))
    .response(
        "200",
        ResponseBuilder::new()
            .description("The store's answer: an object, a list, a revision, or its error")
            .content(
                "application/json",
                ContentBuilder::new().schema(Some(free_object())).build(),
            )
            .build(),
    )
    .response("400", bad_body())
    .build()
}

fn watch_node_store() -> Operation {
    common(op(
        "The changes the node's agent may see, after a revision: one JSON answer per line, \
         until the client closes",
    ))
    .parameter(name_param())
    .parameter(query("kind", string(), false, "Only this kind"))
    .parameter(query(
        "after",
        integer(0, None),
        true,
        "Only changes after this store revision",
    ))
    .response(
        "200",
        raw_response(
            "Watch events, newline-delimited JSON",
            "application/x-ndjson",
            string(),
        ),
    )
    .response(
        "400",
        error("A parameter does not parse, or after is missing"),
    )
    .response(
        "404",
        error("No node of that name (its agent registers it first)"),
    )
    .build()
}

fn fetch_node_blob() -> Operation {
    common(op(
        "The bytes of an image blob, for the node's agent (its node certificate): only of an \
         image one of its volumes clones. The agent keeps them only if they hash to the digest",
    ))
    .parameter(name_param())
    .parameter(
        ParameterBuilder::new()
            .name("digest")
            .parameter_in(ParameterIn::Path)
            .required(Required::True)
            .description(Some("The blob's BLAKE3 digest, 64 hex digits"))
            .schema(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some("^[0-9a-f]{64}$"))
                    .build(),
            ))
            .build(),
    )
    .response(
        "200",
        raw_response("The blob's bytes", "application/octet-stream", string()),
    )
    .response("400", error("The digest is not 64 hex digits"))
    .response(
        "403",
        error("No volume of this node clones an image with these bytes"),
    )
    .response("404", error("The servers hold no such blob"))
    .build()
}

fn join_token_request_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property(
            "ttl",
            string().description(Some("How long it is accepted, e.g. 30m, 1h (at most 7d)")),
        )
        .property("node", corral_contract::schema::name_schema())
        .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)))
}

fn join_token_schema() -> ObjectBuilder {
    let text = |d: &str| string().description(Some(d.to_owned()));
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property(
            "token",
            text("crj.<CA sha256>.<id>.<secret>: give it to corrald --role agent --join-token"),
        )
        .property("expires", text("When it stops being accepted, RFC 3339"))
        .property(
            "ca_sha256",
            text("The SHA-256 of the cluster CA certificate, which the token pins"),
        )
        .required("token")
        .required("expires")
        .required("ca_sha256")
        .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)))
}

fn join_request_schema() -> ObjectBuilder {
    let text = |d: &str| string().description(Some(d.to_owned()));
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("token", text("The join token"))
        .property("node", text("The node's name"))
        .property(
            "csr",
            text("A PEM certificate signing request for the agent's key"),
        )
        .required("token")
        .required("node")
        .required("csr")
        .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)))
}

fn joined_schema() -> ObjectBuilder {
    let text = |d: &str| string().description(Some(d.to_owned()));
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("certificate", text("The node certificate, PEM"))
        .property("ca", text("The cluster CA certificate, PEM"))
        .required("certificate")
        .required("ca")
        .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)))
}

fn created_identity_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("identity", reference("Identity"))
        .required("identity")
        .property(
            "token",
            string().description(Some(
                "The bearer token, when the server made it: shown only here, once",
            )),
        )
        .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)))
}

fn list_audit() -> Operation {
    common(op(
        "Audit records of changes, refusals and memory reads, oldest first (admin only)",
    ))
    .parameter(query(
        "since",
        string(),
        false,
        "Only records at or after this time: RFC 3339, or a duration back from now (90s, 1h)",
    ))
    .parameter(query(
        "identity",
        string(),
        false,
        "Only this caller's records, as they name it (identity:ci, unix:uid=0,pid=1, token:0123abcd)",
    ))
    .parameter(query("project", string(), false, "Only this project's records"))
    .parameter(query(
        "limit",
        integer(0, Some(u64::from(u32::MAX))),
        false,
        "At most this many of the newest matching records (0 or absent: 10000)",
    ))
    .response(
        "200",
        json_response("Matching records", reference("AuditList")),
    )
    .response("400", error("since or another parameter does not parse"))
    .build()
}

fn audit_record_schema() -> ObjectBuilder {
    let text = |d: &str| string().description(Some(d.to_owned()));
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("time", text("When, RFC 3339 (UTC)"))
        .property("identity", text("Who"))
        .property("project", text("The project acted in"))
        .property("verb", text("What: create, delete, start, memory.read …"))
        .property("kind", text("The kind acted on"))
        .property("name", text("The object's name"))
        .property("uid", text("The object's uid"))
        .property("addr", integer(0, None))
        .property("len", integer(0, None))
        .property(
            "outcome",
            string().enum_values(Some(["ok", "denied", "error"])),
        )
        .property("reason", text("Why it was denied or failed"))
        .required("time")
        .required("identity")
        .required("verb")
        .required("name")
        .required("outcome")
}

fn audit_list_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("items", ArrayBuilder::new().items(reference("AuditRecord")))
        .required("items")
        .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)))
}

fn get(kind: &str) -> Operation {
    common(op(&format!("Read a {kind}")))
        .parameter(name_param())
        .response("200", json_response("Found", reference(kind)))
        .response("400", error("The name is not a valid name"))
        .response("404", error("No resource of this kind and name"))
        .build()
}

fn update(kind: &str) -> Operation {
    common(op(&format!(
        "Replace a {kind}'s spec and labels (optimistic: metadata.resource_version must match \
         when set)"
    )))
    .parameter(name_param())
    .request_body(Some(body(kind)))
    .response("200", json_response("Updated", reference(kind)))
    .response("400", bad_body())
    .response(
        "404",
        error("No resource of this kind and name, or one its spec names"),
    )
    .response(
        "409",
        error("It changed since the given resource_version: read and retry"),
    )
    .response(
        "412",
        error("The change does not fit the resource's state (FailedPrecondition)"),
    )
    .response("413", error("The body is larger than 4 MiB"))
    .response("415", error("The body is not declared as application/json"))
    .build()
}

fn delete(kind: &str, ok: &str) -> Operation {
    common(op(&format!("Delete a {kind}")))
        .parameter(name_param())
        .response(
            ok,
            json_response("Deleted, or deletion started", reference(kind)),
        )
        .response("400", error("The name is not a valid name"))
        .response("404", error("No resource of this kind and name"))
        .response("409", error("Other resources still use it"))
        .response(
            "412",
            error("It cannot be deleted in its state (FailedPrecondition)"),
        )
        .build()
}

fn delete_vm() -> Operation {
    let mut op = delete("Vm", "202");
    op.parameters.get_or_insert_with(Vec::new).push(query(
        "resourceVersion",
        integer(0, None),
        false,
        "Delete only if the stored VM has this metadata.resource_version (else 409); absent or 0 \
         deletes whatever is stored.",
    ));
    let params = op.parameters.get_or_insert_with(Vec::new);
    params.push(query(
        "force",
        boolean(),
        false,
        "Skip the graceful stop: QEMU is told to quit at once.",
    ));
    params.push(query(
        "grace",
        integer(0, Some(3600)),
        false,
        "Seconds the guest gets to shut down before QEMU is told to quit (default: the \
         daemon's); 0 is the same as force.",
    ));
    op
}

fn power(summary: &str) -> Operation {
    common(op(summary))
        .parameter(name_param())
        .response(
            "200",
            json_response("The VM with its new wanted power state", reference("Vm")),
        )
        .response("400", error("The name is not a valid name"))
        .response("404", error("No VM of that name"))
        .response("409", error("The VM kept changing: retry"))
        .response(
            "412",
            error("The VM's state does not allow it (FailedPrecondition)"),
        )
        .build()
}

fn stop_vm() -> Operation {
    let mut op = power("Stop the VM");
    op.parameters.get_or_insert_with(Vec::new).push(query(
        "force",
        boolean(),
        false,
        "Quit QEMU at once instead of asking the guest to shut down",
    ));
    op
}

fn migrate_vm() -> Operation {
    let mut op = power(
        "Move the running or paused VM to another node, live; the nodes report in \
         status.migration",
    );
    op.parameters.get_or_insert_with(Vec::new).push(query(
        "to",
        corral_contract::schema::name_schema(),
        false,
        "The node to move it to; left out, the scheduler picks among the other nodes",
    ));
    op.parameters.get_or_insert_with(Vec::new).push(query(
        "auto_converge",
        boolean(),
        false,
        "QEMU slows the guest's vCPUs down when the migration does not converge",
    ));
    op.parameters.get_or_insert_with(Vec::new).push(query(
        "bandwidth",
        <corral_contract::ByteSize as utoipa::PartialSchema>::schema(),
        false,
        "At most this many bytes a second for this move (`8M`, `100MiB`, or bytes); the \
         source node's own --migration-bandwidth applies too, when lower",
    ));
    op.parameters.get_or_insert_with(Vec::new).push(query(
        "postcopy",
        boolean(),
        false,
        "Post-copy: after the first pass of RAM the rest follows the guest on demand, so the \
         migration ends whatever the guest dirties",
    ));
    op
}

fn console_log() -> Operation {
    common(op("The VM's serial console output, as kept by the daemon"))
        .parameter(name_param())
        .parameter(query(
            "tail",
            integer(0, None),
            false,
            &format!(
                "At most this many bytes from the end; 0 (the default) for all that is kept. \
                 At most {MAX_LOG} bytes are kept and returned."
            ),
        ))
        .response(
            "200",
            raw_response(
                "The log's bytes",
                "application/octet-stream",
                string().content_media_type("application/octet-stream"),
            ),
        )
        .response("400", error("The name or query string does not parse"))
        .response("404", error("No VM of that name"))
        .build()
}

fn tunnel_ws() -> Operation {
    common(op(
        "Open a byte stream over WebSocket to a TCP port the VM forwards, on whichever node runs \
         it: binary messages carry the bytes both ways (what `corral vm ssh` rides); an empty \
         binary message says the sender has no more to send (a half-close)",
    ))
    .parameter(name_param())
    .parameter(query(
        "port",
        integer(1, Some(65535)),
        true,
        "The guest TCP port; the VM must forward it (`spec.networks[].forwards`)",
    ))
    .response(
        "101",
        ResponseBuilder::new()
            .description("Switched to WebSocket")
            .build(),
    )
    .response(
        "400",
        error("Not a WebSocket upgrade, or the port is missing or out of range"),
    )
    .response("404", error("No VM of that name"))
    .response(
        "412",
        error("The VM forwards no such port, is not running, or nothing answers there"),
    )
    .build()
}

fn console_ws() -> Operation {
    common(op(
        "Attach to the VM's serial console over WebSocket: binary messages carry console bytes \
         both ways (one writer at a time)",
    ))
    .parameter(name_param())
    .parameter(query(
        "write",
        boolean(),
        false,
        "Take the single writer's place",
    ))
    .parameter(query(
        "scrollback",
        boolean(),
        false,
        "Send what the console printed before attaching first (default true)",
    ))
    .parameter(query(
        "writer_events",
        boolean(),
        false,
        "Also send text messages (JSON `{\"type\":\"writer\",\"holder\":NAME|null,\"you\":BOOL}`) \
         saying who holds the writer: at attach, and whenever it changes hands",
    ))
    .response(
        "101",
        ResponseBuilder::new()
            .description("Switched to WebSocket")
            .build(),
    )
    .response(
        "400",
        error("Not a WebSocket upgrade, or the query string does not parse"),
    )
    .response("404", error("No VM of that name"))
    .response(
        "409",
        error("Another client holds the console's writer place"),
    )
    .response("412", error("The VM is not running (FailedPrecondition)"))
    .build()
}

fn attestation() -> Operation {
    common(op(
        "A signed in-toto statement of what the VM runs (DSSE envelope)",
    ))
    .parameter(name_param())
    .response(
        "200",
        ResponseBuilder::new()
            .description("The envelope")
            .content(
                "application/vnd.dsse.envelope.v1+json",
                ContentBuilder::new()
                    .schema(Some(reference("DsseEnvelope")))
                    .build(),
            )
            .build(),
    )
    .response("400", error("The name is not a valid name"))
    .response("404", error("No VM of that name"))
    .response("412", error("The VM is not running (FailedPrecondition)"))
    .build()
}

/// The answers of every guest-memory route besides its success.
fn memory(op: OperationBuilder) -> OperationBuilder {
    common(op)
        .parameter(name_param())
        .response(
            "400",
            error("A query value that is not allowed; the message names the parameter"),
        )
        .response("404", error("No VM of that name"))
        .response(
            "412",
            error(
                "The VM's RAM cannot be read now: it was not created with spec.introspection, \
                 or it is not running or paused",
            ),
        )
        .response(
            "500",
            error("The memory bridge failed on a VM that should be readable"),
        )
}

/// A number as the memory routes take it: decimal, or hex with `0x`.
fn number(max: Option<u64>) -> ObjectBuilder {
    let pattern = match max {
        Some(max) => format!(
            "^(0*({})|0[xX]0*({}))$",
            corral_contract::schema::uint_range(1, max),
            hex_up_to(max)
        ),
        None => "^([0-9]{1,19}|0[xX][0-9a-fA-F]{1,16})$".to_owned(),
    };
    string().pattern(Some(pattern))
}

/// A pattern for hex numbers 1..=max (without `0x`), where max is a power of two.
fn hex_up_to(max: u64) -> String {
    assert!(max.is_power_of_two() && max >= 16);
    let digits = (max.trailing_zeros() / 4) as usize;
    let lead = 1u64 << (max.trailing_zeros() % 4);
    let mut forms = vec![format!("[1-9a-fA-F][0-9a-fA-F]{{0,{}}}", digits - 1)];
    if lead > 2 {
        forms.push(format!("[1-{}][0-9a-fA-F]{{{digits}}}", lead - 1));
    } else if lead == 2 {
        forms.push(format!("1[0-9a-fA-F]{{{digits}}}"));
    }
    forms.push(format!("{lead}{}", "0".repeat(digits)));
    forms.join("|")
}

fn read_memory() -> Operation {
    memory(op("Read guest-physical memory"))
        .parameter(query(
            "addr",
            number(None),
            true,
            "Guest-physical address, decimal or 0x hex",
        ))
        .parameter(query(
            "len",
            number(Some(MAX_READ)),
            true,
            &format!("Bytes to read, 1 to {MAX_READ} (64 MiB), decimal or 0x hex"),
        ))
        .response(
            "200",
            raw_response(
                "The bytes",
                "application/octet-stream",
                string().content_media_type("application/octet-stream"),
            ),
        )
        .build()
}

fn find_memory() -> Operation {
    let addresses = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("addresses", ArrayBuilder::new().items(integer(0, None)))
        .property("truncated", boolean())
        .required("addresses")
        .required("truncated")
        .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)));
    memory(op("Find a byte pattern in guest RAM"))
        .parameter(query(
            "pattern",
            string().min_length(Some(1)).max_length(Some(1024)),
            false,
            "Text to find (UTF-8). Give this or patternHex.",
        ))
        .parameter(query(
            "patternHex",
            string().pattern(Some("^([0-9a-fA-F]{2}){1,4096}$")),
            false,
            "Bytes to find, as hex digit pairs. Give this or pattern.",
        ))
        .parameter(query(
            "limit",
            integer(0, Some(corral_service::MAX_FIND_LIMIT.into())),
            false,
            "The most addresses to return, up to 100000; 0 (the default) for 1000. The scan \
             stops once it has one more than this",
        ))
        .response(
            "200",
            json_response("Addresses of the pattern, ascending", addresses.into()),
        )
        .build()
}

fn snapshot_memory() -> Operation {
    memory(op("Copy all of guest RAM").description(Some(
        "Streamed as it is copied. Headers give the mode, the regions (x-corral-regions) and \
         the size (x-corral-total-bytes); trailers report how the copy went \
         (x-corral-torn-pages, x-corral-reread-pages, x-corral-pause-us, x-corral-copy-us). \
         At most 2 snapshots stream from a daemon at once.",
    )))
    .parameter(query(
        "mode",
        string().enum_values(Some(["consistent", "atomic"])),
        false,
        "consistent (default): copied while the guest runs, changed pages re-read; atomic: \
             vCPUs paused for the copy",
    ))
    .response(
        "429",
        error("The daemon already streams its limit of snapshots; retry when one is done"),
    )
    .response(
        "200",
        raw_response(
            "Guest RAM",
            "application/octet-stream",
            string().content_media_type("application/octet-stream"),
        ),
    )
    .build()
}

fn side() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .enum_values(Some([0, 16, 32, 64, 128, 256, 512, 1024, 2048]))
}

fn map_memory() -> Operation {
    memory(op("A PNG map of guest RAM, one pixel per block"))
        .parameter(query(
            "side",
            side(),
            false,
            "Width and height in pixels, a power of two from 16 to 2048; 0 (default) for 512",
        ))
        .response(
            "200",
            raw_response(
                "The map",
                "image/png",
                string().content_media_type("image/png"),
            ),
        )
        .build()
}

fn stream_memory() -> Operation {
    memory(op(
        "A live map of guest RAM over WebSocket: a JSON header, then one RGB frame per message, \
         sent when the picture changed (re-sampled fps times a second) and at least once a second",
    ))
    .parameter(query(
        "side",
        side(),
        false,
        "Width and height in pixels, a power of two from 16 to 2048; 0 (default) for 128",
    ))
    .parameter(query(
        "fps",
        integer(1, Some(60)),
        false,
        "Frames per second, 1 to 60 (default 30)",
    ))
    .response(
        "101",
        ResponseBuilder::new()
            .description("Switched to WebSocket")
            .build(),
    )
    .build()
}

fn verify_image() -> Operation {
    common(op("Re-hash an image's bytes and compare with its digest"))
        .parameter(name_param())
        .response(
            "200",
            json_response("The result", reference("VerifyResult")),
        )
        .response("400", error("The name is not a valid name"))
        .response("404", error("No image of that name"))
        .response("412", error("The image is not ready (FailedPrecondition)"))
        .build()
}

fn upload_image() -> Operation {
    common(op(
        "Create an image from the request body's bytes, streamed into the image store (at most \
         corrald's --upload-max-size); it answers when the image is Ready",
    ))
    .parameter(name_param())
    .parameter(query(
        "format",
        string().enum_values(Some(["qcow2", "raw", "kernel", "initrd"])),
        false,
        "The bytes' format; left out, detected from them",
    ))
    .parameter(query(
        "checksum",
        string().pattern(Some(
            "^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}|blake3:[0-9a-f]{64})$",
        )),
        false,
        "`sha256:<hex>`, `sha512:<hex>` or `blake3:<hex>` (lower case) the bytes must have",
    ))
    .parameter(query(
        "filename",
        string(),
        false,
        "The file's name on the client, kept in spec.source for people",
    ))
    .request_body(Some(
        RequestBodyBuilder::new()
            .description(Some("The image's bytes"))
            .content(
                "application/octet-stream",
                ContentBuilder::new()
                    .schema(Some(
                        string().content_media_type("application/octet-stream"),
                    ))
                    .build(),
            )
            .required(Some(Required::True))
            .build(),
    ))
    .response("201", json_response("Created, Ready", reference("Image")))
    .response(
        "400",
        error("The name, a query field or the bytes are not valid (the error names which)"),
    )
    .response("404", error("The project does not exist"))
    .response("409", error("An image of that name exists"))
    .response(
        "413",
        error("The body (or its Content-Length) is over corrald's --upload-max-size"),
    )
    .response(
        "412",
        error("The bytes could not be imported: fewer than Content-Length said, not of the format, or not matching the checksum (FailedPrecondition)"),
    )
    .build()
}

fn list_snapshots() -> Operation {
    let op = common(op("Snapshots, sorted by name")).parameter(query(
        "vm",
        string(),
        false,
        "Only this VM's snapshots (not with watch=true)",
    ));
    watchable(op, "Snapshot", "Snapshots")
        .response(
            "400",
            error("The query string does not parse, or vm was given with watch=true"),
        )
        .build()
}

fn restore_snapshot() -> Operation {
    common(op("Restore a snapshot into its (stopped) VM"))
        .parameter(name_param())
        .response(
            "202",
            json_response("Restore started", reference("Snapshot")),
        )
        .response("400", error("The name is not a valid name"))
        .response("404", error("No snapshot of that name, or its VM is gone"))
        .response("409", error("The VM or snapshot kept changing: retry"))
        .response(
            "412",
            error("The VM is running or the snapshot is not ready"),
        )
        .build()
}

fn openapi() -> Operation {
    op("This document")
        .response(
            "200",
            json_response(
                "The OpenAPI 3.1 document",
                ObjectBuilder::new().schema_type(Type::Object).into(),
            ),
        )
        .response("401", error("TCP only: no or a wrong bearer token"))
        .build()
}

fn metrics() -> Operation {
    op("Prometheus metrics")
        .response(
            "200",
            raw_response(
                "OpenMetrics text",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                string(),
            ),
        )
        .response("401", error("TCP only: no or a wrong bearer token"))
        .build()
}

fn health() -> Operation {
    op("Liveness")
        .response(
            "200",
            raw_response(
                "Alive",
                "text/plain; charset=utf-8",
                string().enum_values(Some(["ok\n"])),
            ),
        )
        .response("401", error("TCP only: no or a wrong bearer token"))
        .build()
}

// --- schemas the daemon adds ------------------------------------------------------------------

fn error_code_schema() -> ObjectBuilder {
    string().enum_values(Some([
        "InvalidArgument",
        "Unauthenticated",
        "PermissionDenied",
        "NotFound",
        "MethodNotAllowed",
        "AlreadyExists",
        "Conflict",
        "Gone",
        "FailedPrecondition",
        "PayloadTooLarge",
        "ResourceExhausted",
        "UnsupportedMediaType",
        "Internal",
        "Unavailable",
    ]))
}

fn error_schema() -> ObjectBuilder {
    let inner = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("code", reference("ErrorCode"))
        .property(
            "message",
            string().description(Some(
                "For people. An InvalidArgument message starts with the JSON path of the field \
                 where it is known (spec.memory: …).",
            )),
        )
        .required("code")
        .required("message")
        .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)));
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some("Why a request failed"))
        .property("error", inner)
        .required("error")
        .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)))
        .examples([json!({"error": {"code": "NotFound", "message": "Vm \"web-1\" not found"}})])
}

fn verify_result_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("ok", boolean())
        .property("image", reference("Image"))
        .required("ok")
        .required("image")
        .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)))
}

fn dsse_schema() -> ObjectBuilder {
    let signature = ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("keyid", string())
        .property("sig", string())
        .required("keyid")
        .required("sig");
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(
            "A DSSE envelope whose payload is an in-toto Statement v1 (base64), signed with the \
             node's Ed25519 key",
        ))
        .property("payload", string())
        .property(
            "payloadType",
            string().enum_values(Some(["application/vnd.in-toto+json"])),
        )
        .property("signatures", ArrayBuilder::new().items(signature))
        .required("payload")
        .required("payloadType")
        .required("signatures")
        .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(false)))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The document and the router cannot drift: every route of the route table (what the
    /// router is built from, with its permission) is documented under the same operation id,
    /// method and path, and nothing else is.
    #[test]
    fn the_document_describes_exactly_the_route_table() {
        let table: BTreeSet<(String, String, String)> = crate::api::routes()
            .into_iter()
            .filter(|r| r.method != axum::http::Method::HEAD)
            .map(|r| {
                (
                    r.operation_id.to_owned(),
                    r.method.as_str().to_lowercase(),
                    r.path.to_owned(),
                )
            })
            .collect();
        let documented: BTreeSet<(String, String, String)> = OPERATIONS
            .iter()
            .map(|(id, m, p, _)| {
                let method = serde_json::to_value(m).unwrap();
                (
                    (*id).to_owned(),
                    method.as_str().unwrap().to_lowercase(),
                    (*p).to_owned(),
                )
            })
            .collect();
        let missing: Vec<_> = table.difference(&documented).collect();
        let extra: Vec<_> = documented.difference(&table).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "routes without a description: {missing:?}; descriptions without a route: {extra:?}"
        );
    }

    #[test]
    fn ids_and_routes_are_unique_and_every_reference_resolves() {
        let ids: BTreeSet<_> = OPERATIONS.iter().map(|(id, ..)| *id).collect();
        assert_eq!(ids.len(), OPERATIONS.len(), "an operation id is used twice");
        let routes: BTreeSet<_> = OPERATIONS
            .iter()
            .map(|(_, m, p, _)| (serde_json::to_string(m).unwrap(), *p))
            .collect();
        assert_eq!(routes.len(), OPERATIONS.len(), "a route is described twice");
        let doc: serde_json::Value = serde_json::from_str(document()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let documented: usize = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|item| item.as_object().unwrap().len())
            .sum();
        assert_eq!(
            documented,
            OPERATIONS.len(),
            "every operation is in the document"
        );
        let text = document();
        for (at, _) in text.match_indices("\"$ref\": \"#/components/schemas/") {
            let rest = &text[at + "\"$ref\": \"#/components/schemas/".len()..];
            let name = &rest[..rest.find('"').unwrap()];
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "{name} is referred to but missing"
            );
        }
        for (id, _, path, _) in OPERATIONS {
            let op = operation(id).unwrap();
            assert_eq!(op.operation_id.as_deref(), Some(*id));
            let params = op.parameters.unwrap_or_default();
            let has_name = params.iter().any(|p| p.name == "name");
            assert_eq!(has_name, path.contains("{name}"), "{id}: path parameter");
        }
    }

    /// `openapi.json` is the generated document, committed for readers and for clients built
    /// from it; `CORRAL_WRITE_OPENAPI=1 cargo test -p corral-daemon openapi` rewrites it.
    #[test]
    fn the_committed_document_is_the_generated_one() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
        let generated = format!("{}\n", document());
        if std::env::var_os("CORRAL_WRITE_OPENAPI").is_some() {
            std::fs::write(path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == generated,
            "{path} is not the generated document: run CORRAL_WRITE_OPENAPI=1 cargo test -p \
             corral-daemon openapi"
        );
    }

    #[test]
    fn memory_reads_are_capped_as_the_handler_caps_them() {
        let doc: serde_json::Value = serde_json::from_str(document()).unwrap();
        let params = &doc["paths"]["/v1/vms/{name}/memory"]["get"]["parameters"];
        let len = params
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "len")
            .unwrap();
        let pattern = regex::Regex::new(len["schema"]["pattern"].as_str().unwrap()).unwrap();
        for ok in [
            "1",
            "4096",
            "67108864",
            "0x4000000",
            "0x3ffffff",
            "0x1",
            "0X10",
            "007",
        ] {
            assert!(pattern.is_match(ok), "{ok}");
        }
        for bad in [
            "0",
            "67108865",
            "0x4000001",
            "0x0",
            "0x",
            "",
            "1e3",
            "-1",
            "0x10000000",
        ] {
            assert!(!pattern.is_match(bad), "{bad}");
        }
    }
}
