//! The `provider "corral" { … }` block: where corrald is, and how to authenticate.

use std::path::PathBuf;

use corral_client::Endpoint;

use crate::diag::Diagnostic;
use crate::schema::{Attr, Schema};
use crate::value::Value;

/// The provider block's schema.
pub fn schema() -> Schema {
    Schema::new(
        "Corral runs VMs on QEMU and keeps them as declared. The provider talks to `corrald` \
         through the same client as the `corral` CLI; every setting falls back to the CLI's \
         environment variables.",
    )
    .attr(Attr::string("endpoint").describe(
        "corrald's unix socket path (`/run/corral/corral.sock`, or `unix:///path`), or its \
         TLS address `https://HOST:PORT`. Default: `CORRAL_SERVER`, else `CORRAL_SOCKET`, else \
         the local daemon's default socket.",
    ))
    .attr(Attr::string("token").sensitive().describe(
        "Bearer token for a TLS endpoint (`corrald hash-token` made its hash). Default: \
         `CORRAL_TOKEN`.",
    ))
    .attr(Attr::string("ca_file").describe(
        "PEM file of the CA that signed corrald's TLS certificate, instead of the system's \
         roots. Default: `CORRAL_CA_FILE`.",
    ))
    .attr(Attr::string("project").describe(
        "The project every resource of this provider lives in. Default: `CORRAL_PROJECT`, \
         else the identity's only project, else `default`.",
    ))
}

/// The project the configuration and environment choose, if any.
pub fn project(
    config: &Value,
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<Option<String>, Vec<Diagnostic>> {
    let named = match config.get("project") {
        Value::Unknown => {
            return Err(vec![Diagnostic::attr_error(
                &["project"],
                "Unknown provider project",
                "set project to a value known while planning",
            )]);
        }
        value => value.as_str().map(str::to_owned),
    };
    let named =
        named.or_else(|| env(corral_client::ENV_PROJECT).map(|p| p.to_string_lossy().into_owned()));
    match named {
        Some(p) => corral_client::contract::ResourceName::new(p.clone())
            .map(|_| Some(p))
            .map_err(|e| {
                vec![Diagnostic::attr_error(
                    &["project"],
                    "Invalid project",
                    e.to_string(),
                )]
            }),
        None => Ok(None),
    }
}

/// The endpoint the configuration and environment choose, or diagnostics saying what is wrong.
pub fn endpoint(
    config: &Value,
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<Endpoint, Vec<Diagnostic>> {
    for name in ["endpoint", "token", "ca_file"] {
        if config.get(name) == &Value::Unknown {
            return Err(vec![Diagnostic::attr_error(
                &[name],
                format!("Unknown provider {name}"),
                format!(
                    "the provider's {name} depends on a value known only after apply; set it \
                     to a value known while planning"
                ),
            )]);
        }
    }
    let text = |name: &str| config.get(name).as_str().map(str::to_owned);
    let (socket, server) = match text("endpoint") {
        Some(e) if e.trim().is_empty() => {
            return Err(vec![Diagnostic::attr_error(
                &["endpoint"],
                "Empty endpoint",
                "give a unix socket path or https://HOST:PORT, or leave endpoint unset",
            )]);
        }
        Some(e) => match e.strip_prefix("unix://") {
            Some(path) => (Some(PathBuf::from(path)), None),
            None if e.contains("://") => (None, Some(e)),
            None => (Some(PathBuf::from(e)), None),
        },
        None => (None, None),
    };
    let ca_file = text("ca_file").map(PathBuf::from);
    Endpoint::resolve(socket, server, text("token"), ca_file, env).map_err(|e| {
        vec![Diagnostic::attr_error(
            &["endpoint"],
            "Invalid endpoint",
            e.to_string(),
        )]
    })
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use super::*;

    fn config(pairs: &[(&str, Value)]) -> Value {
        let mut v = Value::Null;
        for name in ["endpoint", "token", "ca_file"] {
            v.set(name, Value::Null);
        }
        for (k, val) in pairs {
            v.set(k, val.clone());
        }
        v
    }

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<OsString> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn paths_are_sockets_and_urls_are_servers() {
        let e = endpoint(&config(&[("endpoint", Value::string("/s.sock"))]), env(&[]));
        assert_eq!(e.unwrap(), Endpoint::Unix("/s.sock".into()));
        let e = endpoint(
            &config(&[("endpoint", Value::string("unix:///r/c.sock"))]),
            env(&[]),
        );
        assert_eq!(e.unwrap(), Endpoint::Unix("/r/c.sock".into()));
        let e = endpoint(
            &config(&[
                ("endpoint", Value::string("https://h:7443")),
                ("ca_file", Value::string("/ca.pem")),
            ]),
            env(&[("CORRAL_TOKEN", "t")]),
        );
        assert_eq!(
            e.unwrap(),
            Endpoint::Https {
                url: "https://h:7443".into(),
                token: Some("t".into()),
                ca_file: Some("/ca.pem".into())
            }
        );
    }

    #[test]
    fn unset_falls_back_to_the_cli_variables() {
        let e = endpoint(&config(&[]), env(&[("CORRAL_SOCKET", "/env.sock")]));
        assert_eq!(e.unwrap(), Endpoint::Unix("/env.sock".into()));
        let e = endpoint(&config(&[]), env(&[("CORRAL_SERVER", "https://e:1")]));
        assert!(matches!(e.unwrap(), Endpoint::Https { url, .. } if url == "https://e:1"));
    }

    #[test]
    fn bad_endpoints_name_the_attribute() {
        let diags = endpoint(
            &config(&[("endpoint", Value::string("http://h:1"))]),
            env(&[]),
        )
        .unwrap_err();
        assert_eq!(diags[0].path, ["endpoint"]);
        assert!(diags[0].detail.contains("only with TLS"), "{:?}", diags[0]);
        let diags = endpoint(&config(&[("endpoint", Value::Unknown)]), env(&[])).unwrap_err();
        assert!(diags[0].summary.contains("Unknown"));
    }
}
