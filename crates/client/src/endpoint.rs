//! Where corrald listens, and how the environment and flags choose it.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::ClientError;

/// Environment variable naming corrald's unix socket.
pub const ENV_SOCKET: &str = "CORRAL_SOCKET";
/// Environment variable naming corrald's TLS address, `https://host:port`.
pub const ENV_SERVER: &str = "CORRAL_SERVER";
/// Environment variable holding the bearer token sent to a TLS server.
pub const ENV_TOKEN: &str = "CORRAL_TOKEN";
/// Environment variable naming a PEM file of CA certificates that sign the server's.
pub const ENV_CA_FILE: &str = "CORRAL_CA_FILE";
/// Environment variable naming the project requests act in.
pub const ENV_PROJECT: &str = "CORRAL_PROJECT";

/// How to reach corrald.
#[derive(Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// The local daemon's unix socket (mode 0600: the socket's permissions are the
    /// authorisation).
    Unix(PathBuf),
    /// A daemon on TCP, with TLS and a bearer token.
    Https {
        /// `https://host:port`.
        url: String,
        /// Sent as `authorization: Bearer <token>` on every call. Without one the server
        /// refuses every call with `UNAUTHENTICATED`.
        token: Option<String>,
        /// PEM CA certificates to trust instead of the system's roots.
        ca_file: Option<PathBuf>,
    },
}

// By hand, so that the token never lands in a log or an error message.
impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(path) => f.debug_tuple("Unix").field(path).finish(),
            Endpoint::Https {
                url,
                token,
                ca_file,
            } => f
                .debug_struct("Https")
                .field("url", url)
                .field("token", &token.as_ref().map(|_| "<redacted>"))
                .field("ca_file", ca_file)
                .finish(),
        }
    }
}

/// The socket path for people: the path itself, or the URL.
impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(path) => write!(f, "{}", path.display()),
            Endpoint::Https { url, .. } => f.write_str(url),
        }
    }
}

impl Endpoint {
    /// The endpoint chosen by command-line flags, then the `CORRAL_*` environment variables,
    /// then [`default_socket_path`].
    ///
    /// A server (flag `--server` or `CORRAL_SERVER`) selects TLS, a socket selects the unix
    /// socket; a flag of either kind beats both variables. The token and CA file are taken
    /// from their flag, else their variable, and only matter for a server.
    pub fn from_env_and_flags(
        socket: Option<PathBuf>,
        server: Option<String>,
        token: Option<String>,
        ca_file: Option<PathBuf>,
    ) -> Result<Endpoint, ClientError> {
        Self::resolve(socket, server, token, ca_file, |name| {
            std::env::var_os(name)
        })
    }

    /// [`Endpoint::from_env_and_flags`] with the environment read through `env`.
    pub fn resolve(
        socket: Option<PathBuf>,
        server: Option<String>,
        token: Option<String>,
        ca_file: Option<PathBuf>,
        env: impl Fn(&str) -> Option<OsString>,
    ) -> Result<Endpoint, ClientError> {
        // Empty variables count as unset, as shells make unsetting awkward.
        let var = |name: &str| env(name).filter(|v| !v.is_empty());
        let string_var = |name: &str| -> Result<Option<String>, ClientError> {
            var(name)
                .map(|v| {
                    v.into_string().map_err(|_| ClientError::Config {
                        message: format!("{name} is not valid UTF-8"),
                    })
                })
                .transpose()
        };
        if socket.is_some() && server.is_some() {
            return Err(ClientError::Config {
                message: "--socket and --server cannot be used together: choose one".into(),
            });
        }
        let server = match (socket, server) {
            (Some(path), None) => return Ok(Endpoint::Unix(path)),
            (None, Some(url)) => Some(url),
            _ => match string_var(ENV_SERVER)? {
                Some(url) => Some(url),
                None => {
                    let path = var(ENV_SOCKET).map_or_else(default_socket_path, PathBuf::from);
                    return Ok(Endpoint::Unix(path));
                }
            },
        };
        let url = https_url(&server.unwrap_or_default())?;
        let token = match token {
            Some(token) => Some(token),
            None => string_var(ENV_TOKEN)?,
        };
        let ca_file = ca_file.or_else(|| var(ENV_CA_FILE).map(PathBuf::from));
        Ok(Endpoint::Https {
            url,
            token,
            ca_file,
        })
    }

    /// Whether the daemon is on this host (a unix socket), so that host paths in a spec can
    /// be checked here.
    pub fn is_local(&self) -> bool {
        matches!(self, Endpoint::Unix(_))
    }
}

/// `host:port` becomes `https://host:port`; `http://` is refused, as corrald serves TCP only
/// with TLS.
fn https_url(server: &str) -> Result<String, ClientError> {
    let server = server.trim();
    if server.is_empty() {
        return Err(ClientError::Config {
            message: "the server address is empty: give https://HOST:PORT".into(),
        });
    }
    match server.split_once("://") {
        None => Ok(format!("https://{server}")),
        Some(("https", rest)) if !rest.is_empty() => Ok(server.to_owned()),
        Some(("http", _)) => Err(ClientError::Config {
            message: format!(
                "{server}: corrald serves TCP only with TLS: use https://, or --socket for \
                 the local daemon"
            ),
        }),
        Some(_) => Err(ClientError::Config {
            message: format!("{server} is not a server address: give https://HOST:PORT"),
        }),
    }
}

/// Where corrald puts its socket by default: `/run/corral/corral.sock` for root,
/// `$XDG_RUNTIME_DIR/corral/corral.sock` for other users, and
/// `$TMPDIR/corral-<uid>/corral.sock` (`/tmp/…`) when `XDG_RUNTIME_DIR` is not set: the same
/// rule as corrald's.
pub fn default_socket_path() -> PathBuf {
    let uid = nix::unistd::geteuid();
    let runtime_dir = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty());
    default_socket_path_for(
        uid.is_root(),
        uid.as_raw(),
        runtime_dir,
        &std::env::temp_dir(),
    )
}

fn default_socket_path_for(
    root: bool,
    uid: u32,
    runtime_dir: Option<OsString>,
    temp_dir: &Path,
) -> PathBuf {
    let run_dir = match (root, runtime_dir) {
        (true, _) => PathBuf::from("/run/corral"),
        (false, Some(dir)) => PathBuf::from(dir).join("corral"),
        (false, None) => temp_dir.join(format!("corral-{uid}")),
    };
    run_dir.join("corral.sock")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            vars.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn flags_beat_environment_beats_default() {
        let all = env(&[
            (ENV_SOCKET, "/env.sock"),
            (ENV_SERVER, "https://env:1"),
            (ENV_TOKEN, "env-token"),
        ]);
        let flag_socket = Endpoint::resolve(Some("/flag.sock".into()), None, None, None, &all);
        assert_eq!(flag_socket.unwrap(), Endpoint::Unix("/flag.sock".into()));

        let flag_server =
            Endpoint::resolve(None, Some("https://flag:2".into()), None, None, &all).unwrap();
        assert_eq!(
            flag_server,
            Endpoint::Https {
                url: "https://flag:2".into(),
                token: Some("env-token".into()),
                ca_file: None
            }
        );

        // CORRAL_SERVER beats CORRAL_SOCKET.
        let from_env = Endpoint::resolve(None, None, Some("t".into()), None, &all).unwrap();
        assert!(
            matches!(from_env, Endpoint::Https { ref url, ref token, .. }
            if url == "https://env:1" && token.as_deref() == Some("t"))
        );

        let socket_env = env(&[(ENV_SOCKET, "/env.sock"), (ENV_SERVER, "")]);
        let from_socket = Endpoint::resolve(None, None, None, None, socket_env).unwrap();
        assert_eq!(from_socket, Endpoint::Unix("/env.sock".into()));

        let default = Endpoint::resolve(None, None, None, None, env(&[])).unwrap();
        assert_eq!(default, Endpoint::Unix(default_socket_path()));
    }

    #[test]
    fn server_addresses_need_tls() {
        let resolve = |s: &str| Endpoint::resolve(None, Some(s.into()), None, None, env(&[]));
        assert!(
            matches!(resolve("host:7443").unwrap(), Endpoint::Https { url, .. } if url == "https://host:7443")
        );
        let err = resolve("http://host:7443").unwrap_err().to_string();
        assert!(err.contains("only with TLS"), "{err}");
        assert!(resolve("ftp://host").is_err());
        let both = Endpoint::resolve(Some("/s".into()), Some("h:1".into()), None, None, env(&[]));
        assert!(
            both.unwrap_err()
                .to_string()
                .contains("cannot be used together")
        );
    }

    #[test]
    fn default_socket_depends_on_user() {
        assert_eq!(
            default_socket_path_for(true, 0, Some("/run/user/0".into()), Path::new("/tmp")),
            PathBuf::from("/run/corral/corral.sock")
        );
        assert_eq!(
            default_socket_path_for(
                false,
                1000,
                Some("/run/user/1000".into()),
                Path::new("/tmp")
            ),
            PathBuf::from("/run/user/1000/corral/corral.sock")
        );
        assert_eq!(
            default_socket_path_for(false, 1000, None, Path::new("/tmp")),
            PathBuf::from("/tmp/corral-1000/corral.sock")
        );
    }

    #[test]
    fn debug_hides_the_token() {
        let endpoint = Endpoint::Https {
            url: "https://h:1".into(),
            token: Some("secret".into()),
            ca_file: None,
        };
        assert!(!format!("{endpoint:?}").contains("secret"));
        assert_eq!(endpoint.to_string(), "https://h:1");
    }
}
