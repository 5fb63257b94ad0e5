//! `tfplugin6.Provider`: decodes each request, hands it to the resource or data source it
//! names, encodes the answer. Nothing here knows about VMs.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use corral_client::Client;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::config;
use crate::diag::{self, Diagnostic};
use crate::pb::tfplugin6::{self as tf, provider_server::Provider};
use crate::plan;
use crate::resource::{Ctx, DataSource, Resource};
use crate::schema::Schema;
use crate::value::{Type, Value};

/// The provider: its resources, data sources and, once configured, its connection.
pub struct ProviderService {
    schema: Schema,
    resources: BTreeMap<&'static str, Arc<dyn Resource>>,
    data_sources: BTreeMap<&'static str, Arc<dyn DataSource>>,
    ctx: RwLock<Option<Ctx>>,
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for ProviderService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderService")
            .field("resources", &self.resources.keys().collect::<Vec<_>>())
            .field(
                "data_sources",
                &self.data_sources.keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Default for ProviderService {
    fn default() -> Self {
        Self::new()
    }
}

impl ProviderService {
    /// A provider with no resources yet.
    pub fn new() -> Self {
        ProviderService {
            schema: config::schema(),
            resources: BTreeMap::new(),
            data_sources: BTreeMap::new(),
            ctx: RwLock::new(None),
            stop: watch::channel(false).0,
        }
    }

    /// Adds a resource.
    pub fn resource(mut self, resource: impl Resource + 'static) -> Self {
        self.resources
            .insert(resource.type_name(), Arc::new(resource));
        self
    }

    /// Adds a data source.
    pub fn data_source(mut self, data: impl DataSource + 'static) -> Self {
        self.data_sources.insert(data.type_name(), Arc::new(data));
        self
    }

    fn resource_named(&self, name: &str) -> Result<Arc<dyn Resource>, Status> {
        self.resources
            .get(name)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("this provider has no resource {name:?}")))
    }

    fn data_named(&self, name: &str) -> Result<Arc<dyn DataSource>, Status> {
        self.data_sources
            .get(name)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("this provider has no data source {name:?}")))
    }

    fn ctx(&self) -> Result<Ctx, Vec<Diagnostic>> {
        self.ctx
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| {
                vec![Diagnostic::error(
                    "Provider not configured",
                    "Terraform called the provider before configuring it",
                )]
            })
    }
}

fn decode(value: Option<&tf::DynamicValue>, ty: &Type) -> Result<Value, Vec<Diagnostic>> {
    let Some(value) = value else {
        return Ok(Value::Null);
    };
    let decoded = if !value.msgpack.is_empty() {
        Value::from_msgpack(&value.msgpack, ty)
    } else if !value.json.is_empty() {
        Value::from_json(&value.json, ty)
    } else {
        Ok(Value::Null)
    };
    decoded.map_err(|e| {
        vec![Diagnostic::error(
            "Value does not match the schema",
            format!("Terraform sent a value the provider cannot read: {e}"),
        )]
    })
}

fn encode(value: &Value, ty: &Type) -> Option<tf::DynamicValue> {
    Some(tf::DynamicValue {
        msgpack: value.to_msgpack(ty),
        json: Vec::new(),
    })
}

/// Either the value or the diagnostics, for a response that carries both.
fn split<T>(result: Result<T, Vec<Diagnostic>>) -> (Option<T>, Vec<tf::Diagnostic>) {
    match result {
        Ok(v) => (Some(v), Vec::new()),
        Err(d) => (None, diag::to_proto(&d)),
    }
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl Provider for ProviderService {
    async fn get_metadata(
        &self,
        _: Request<tf::get_metadata::Request>,
    ) -> Reply<tf::get_metadata::Response> {
        Ok(Response::new(tf::get_metadata::Response {
            server_capabilities: Some(capabilities()),
            diagnostics: Vec::new(),
            data_sources: self
                .data_sources
                .keys()
                .map(|n| tf::get_metadata::DataSourceMetadata {
                    type_name: n.to_string(),
                })
                .collect(),
            resources: self
                .resources
                .keys()
                .map(|n| tf::get_metadata::ResourceMetadata {
                    type_name: n.to_string(),
                })
                .collect(),
        }))
    }

    async fn get_provider_schema(
        &self,
        _: Request<tf::get_provider_schema::Request>,
    ) -> Reply<tf::get_provider_schema::Response> {
        Ok(Response::new(tf::get_provider_schema::Response {
            provider: Some(self.schema.to_proto()),
            resource_schemas: self
                .resources
                .iter()
                .map(|(n, r)| (n.to_string(), r.schema().to_proto()))
                .collect(),
            data_source_schemas: self
                .data_sources
                .iter()
                .map(|(n, d)| (n.to_string(), d.schema().to_proto()))
                .collect(),
            diagnostics: Vec::new(),
            provider_meta: None,
            server_capabilities: Some(capabilities()),
        }))
    }

    async fn validate_provider_config(
        &self,
        request: Request<tf::validate_provider_config::Request>,
    ) -> Reply<tf::validate_provider_config::Response> {
        let request = request.into_inner();
        let result = decode(request.config.as_ref(), &self.schema.ty()).and_then(|config| {
            // Unknown values are allowed here; ConfigureProvider refuses them.
            if ["endpoint", "token", "ca_file", "project"]
                .iter()
                .any(|n| config.get(n) == &Value::Unknown)
            {
                return Ok(());
            }
            config::project(&config, |_| None)?;
            config::endpoint(&config, |_| None).map(drop)
        });
        Ok(Response::new(tf::validate_provider_config::Response {
            diagnostics: split(result).1,
        }))
    }

    async fn validate_resource_config(
        &self,
        request: Request<tf::validate_resource_config::Request>,
    ) -> Reply<tf::validate_resource_config::Response> {
        let request = request.into_inner();
        let resource = self.resource_named(&request.type_name)?;
        let diagnostics = match decode(request.config.as_ref(), &resource.schema().ty()) {
            Ok(config) => diag::to_proto(&resource.validate(&config)),
            Err(d) => diag::to_proto(&d),
        };
        Ok(Response::new(tf::validate_resource_config::Response {
            diagnostics,
        }))
    }

    async fn validate_data_resource_config(
        &self,
        request: Request<tf::validate_data_resource_config::Request>,
    ) -> Reply<tf::validate_data_resource_config::Response> {
        let request = request.into_inner();
        let data = self.data_named(&request.type_name)?;
        let result = decode(request.config.as_ref(), &data.schema().ty());
        Ok(Response::new(tf::validate_data_resource_config::Response {
            diagnostics: split(result).1,
        }))
    }

    async fn upgrade_resource_state(
        &self,
        request: Request<tf::upgrade_resource_state::Request>,
    ) -> Reply<tf::upgrade_resource_state::Response> {
        let request = request.into_inner();
        let resource = self.resource_named(&request.type_name)?;
        let ty = resource.schema().ty();
        let raw = request.raw_state.unwrap_or_default();
        let result = if raw.json.is_empty() {
            Err(vec![Diagnostic::error(
                "Unsupported state format",
                "the state is in the flatmap format of Terraform 0.11 and older, which this \
                 provider never wrote",
            )])
        } else {
            serde_json::from_slice(&raw.json)
                .map(|json| resource.upgrade_state(request.version, json))
                .and_then(|json| serde_json::to_vec(&json))
                .map_err(crate::value::DecodeError::from)
                .and_then(|json| Value::from_json(&json, &ty))
                .map_err(|e| {
                    vec![Diagnostic::error(
                        "Cannot read the stored state",
                        format!("{}: {e}", request.type_name),
                    )]
                })
        };
        let (state, diagnostics) = split(result);
        Ok(Response::new(tf::upgrade_resource_state::Response {
            upgraded_state: state.and_then(|s| encode(&s, &ty)),
            diagnostics,
        }))
    }

    async fn configure_provider(
        &self,
        request: Request<tf::configure_provider::Request>,
    ) -> Reply<tf::configure_provider::Response> {
        let request = request.into_inner();
        let result = async {
            let config = decode(request.config.as_ref(), &self.schema.ty())?;
            let endpoint = config::endpoint(&config, |name| std::env::var_os(name))?;
            tracing::info!(%endpoint, terraform = request.terraform_version, "configuring");
            let project = config::project(&config, |name| std::env::var_os(name))?;
            let client = Client::connect(endpoint).await.map_err(|e| {
                vec![Diagnostic::attr_error(
                    &["endpoint"],
                    "Cannot reach corrald",
                    e.to_string(),
                )]
            })?;
            let client = client.in_project(project.as_deref(), false).map_err(|e| {
                vec![Diagnostic::attr_error(
                    &["project"],
                    "Invalid project",
                    e.to_string(),
                )]
            })?;
            *self.ctx.write().unwrap_or_else(|e| e.into_inner()) = Some(Ctx {
                client,
                stop: self.stop.subscribe(),
            });
            Ok(())
        }
        .await;
        Ok(Response::new(tf::configure_provider::Response {
            diagnostics: split(result).1,
        }))
    }

    async fn read_resource(
        &self,
        request: Request<tf::read_resource::Request>,
    ) -> Reply<tf::read_resource::Response> {
        let request = request.into_inner();
        let resource = self.resource_named(&request.type_name)?;
        let ty = resource.schema().ty();
        let result = async {
            let state = decode(request.current_state.as_ref(), &ty)?;
            resource.read(&self.ctx()?, &state).await
        }
        .await;
        let (state, diagnostics) = match result {
            // Gone: a null state tells Terraform to plan creating it again.
            Ok(state) => (encode(&state.unwrap_or_default(), &ty), Vec::new()),
            // Keep what Terraform had, so that a failed read does not forget the object.
            Err(d) => (request.current_state, diag::to_proto(&d)),
        };
        Ok(Response::new(tf::read_resource::Response {
            new_state: state,
            diagnostics,
            private: request.private,
        }))
    }

    async fn plan_resource_change(
        &self,
        request: Request<tf::plan_resource_change::Request>,
    ) -> Reply<tf::plan_resource_change::Response> {
        let request = request.into_inner();
        let resource = self.resource_named(&request.type_name)?;
        let ty = resource.schema().ty();
        let decoded = (|| {
            Ok::<_, Vec<Diagnostic>>((
                decode(request.prior_state.as_ref(), &ty)?,
                decode(request.proposed_new_state.as_ref(), &ty)?,
                decode(request.config.as_ref(), &ty)?,
            ))
        })();
        let (prior, proposed, config) = match decoded {
            Ok(values) => values,
            Err(d) => {
                return Ok(Response::new(tf::plan_resource_change::Response {
                    diagnostics: diag::to_proto(&d),
                    ..Default::default()
                }));
            }
        };
        let plan = plan::plan(resource.as_ref(), prior, proposed, config);
        Ok(Response::new(tf::plan_resource_change::Response {
            planned_state: encode(&plan.planned, &ty),
            requires_replace: plan
                .requires_replace
                .iter()
                .map(|name| diag::attribute_path(&[name]))
                .collect(),
            planned_private: request.prior_private,
            diagnostics: diag::to_proto(&plan.diags),
        }))
    }

    async fn apply_resource_change(
        &self,
        request: Request<tf::apply_resource_change::Request>,
    ) -> Reply<tf::apply_resource_change::Response> {
        let request = request.into_inner();
        let resource = self.resource_named(&request.type_name)?;
        let ty = resource.schema().ty();
        let mut prior = Value::Null;
        let result = async {
            prior = decode(request.prior_state.as_ref(), &ty)?;
            let planned = decode(request.planned_state.as_ref(), &ty)?;
            let ctx = self.ctx()?;
            match (prior.is_null(), planned.is_null()) {
                (_, true) => resource.delete(&ctx, &prior).await.map(|()| Value::Null),
                (true, false) => resource.create(&ctx, &planned).await,
                (false, false) => resource.update(&ctx, &prior, &planned).await,
            }
        }
        .await;
        let (state, diagnostics) = match result {
            Ok(state) => (state, Vec::new()),
            // The object as it was: a failed create leaves nothing (the resource cleans up),
            // a failed update or delete leaves the prior object.
            Err(d) => (prior, diag::to_proto(&d)),
        };
        Ok(Response::new(tf::apply_resource_change::Response {
            new_state: encode(&state, &ty),
            private: request.planned_private,
            diagnostics,
        }))
    }

    async fn import_resource_state(
        &self,
        request: Request<tf::import_resource_state::Request>,
    ) -> Reply<tf::import_resource_state::Response> {
        let request = request.into_inner();
        let resource = self.resource_named(&request.type_name)?;
        let ty = resource.schema().ty();
        let result = async { resource.import(&self.ctx()?, &request.id).await }.await;
        let (state, diagnostics) = split(result);
        Ok(Response::new(tf::import_resource_state::Response {
            imported_resources: state
                .map(|state| tf::import_resource_state::ImportedResource {
                    type_name: request.type_name.clone(),
                    state: encode(&state, &ty),
                    private: Vec::new(),
                })
                .into_iter()
                .collect(),
            diagnostics,
        }))
    }

    async fn read_data_source(
        &self,
        request: Request<tf::read_data_source::Request>,
    ) -> Reply<tf::read_data_source::Response> {
        let request = request.into_inner();
        let data = self.data_named(&request.type_name)?;
        let ty = data.schema().ty();
        let result = async {
            let config = decode(request.config.as_ref(), &ty)?;
            data.read(&self.ctx()?, &config).await
        }
        .await;
        let (state, diagnostics) = split(result);
        Ok(Response::new(tf::read_data_source::Response {
            state: state.and_then(|s| encode(&s, &ty)),
            diagnostics,
        }))
    }

    async fn stop_provider(
        &self,
        _: Request<tf::stop_provider::Request>,
    ) -> Reply<tf::stop_provider::Response> {
        tracing::info!("Terraform asked to stop: ending waits");
        let _ = self.stop.send(true);
        Ok(Response::new(tf::stop_provider::Response {
            error: String::new(),
        }))
    }
}

fn capabilities() -> tf::ServerCapabilities {
    tf::ServerCapabilities {
        plan_destroy: false,
        get_provider_schema_optional: false,
        move_resource_state: false,
    }
}
