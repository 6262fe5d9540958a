//! Who may reach the API.
//!
//! A page on any site the user visits can reach a server on loopback by DNS rebinding: its
//! name is re-resolved to 127.0.0.1, and the browser then sends that site's name as the Host.
//! So only requests naming a host the server is known by are answered (IP addresses,
//! `localhost`, and the names it is given). Pages of other origins read nothing unless their
//! origin is named (CORS). With an API key, whatever changes state (submitting and cancelling
//! jobs) needs it; reading models and results does not, so share links keep working.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::{Result, bail};
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// The serve flags that say who may reach the API.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Access {
    /// A host name the server is reached by, besides IP addresses and localhost (repeatable;
    /// `*` for any). A request naming another Host is refused with 421: that is what a web
    /// page reaching this server by DNS rebinding sends.
    #[arg(
        long = "allow-host",
        value_name = "NAME",
        env = "REFUSAL_LENS_ALLOW_HOSTS",
        value_delimiter = ','
    )]
    pub allow_hosts: Vec<String>,
    /// An origin (`https://example.org`) whose pages may read models and results (repeatable;
    /// `*` for any). None by default: the app's own pages are same-origin.
    #[arg(
        long = "allow-origin",
        value_name = "ORIGIN",
        env = "REFUSAL_LENS_ALLOW_ORIGINS",
        value_delimiter = ','
    )]
    pub allow_origins: Vec<String>,
    /// A key that submitting and cancelling jobs needs (`Authorization: Bearer KEY`). Without
    /// one, anyone who can reach the server can run jobs on it.
    #[arg(
        long,
        value_name = "KEY",
        env = "REFUSAL_LENS_API_KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,
    /// Listen beyond loopback with no API key, letting anyone who can reach the server run
    /// jobs on it. Without this flag (or a key) such an `--addr` is refused.
    #[arg(long)]
    pub insecure_no_auth: bool,
}

/// [`Access`] checked, as the middleware uses it.
#[derive(Debug)]
pub struct AccessPolicy {
    any_host: bool,
    hosts: Vec<String>,
    api_key: Option<String>,
    cors: Option<CorsLayer>,
}

impl Access {
    /// The policy these flags describe.
    ///
    /// # Errors
    ///
    /// An origin that is not `scheme://host[:port]`, an empty API key.
    pub fn policy(&self) -> Result<AccessPolicy> {
        if self.api_key.as_deref().is_some_and(|k| k.trim().is_empty()) {
            bail!("--api-key is empty");
        }
        let any_host = self.allow_hosts.iter().any(|h| h == "*");
        let hosts = self
            .allow_hosts
            .iter()
            .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
            .collect();
        let cors = if self.allow_origins.is_empty() {
            None
        } else {
            let allow = if self.allow_origins.iter().any(|o| o == "*") {
                AllowOrigin::any()
            } else {
                let origins = self
                    .allow_origins
                    .iter()
                    .map(|o| origin_header(o))
                    .collect::<Result<Vec<_>>>()?;
                AllowOrigin::list(origins)
            };
            Some(
                CorsLayer::new()
                    .allow_origin(allow)
                    .allow_methods([Method::GET, Method::HEAD])
                    .expose_headers([
                        header::CONTENT_RANGE,
                        header::CONTENT_LENGTH,
                        header::ACCEPT_RANGES,
                        header::ETAG,
                    ]),
            )
        };
        Ok(AccessPolicy {
            any_host,
            hosts,
            api_key: self.api_key.clone(),
            cors,
        })
    }

    /// Refuses to listen on `addr` beyond loopback without a key, unless told to.
    ///
    /// # Errors
    ///
    /// A non-loopback address with neither `--api-key` nor `--insecure-no-auth`.
    pub fn check_listen(&self, addr: SocketAddr) -> Result<()> {
        if addr.ip().is_loopback() || self.api_key.is_some() {
            return Ok(());
        }
        if !self.insecure_no_auth {
            bail!(
                "--addr {addr} is reachable beyond this machine and there is no API key: \
                 anyone who can reach it could run jobs. Pass --api-key KEY (or set \
                 REFUSAL_LENS_API_KEY), or --insecure-no-auth to serve without one"
            );
        }
        tracing::warn!(
            "listening on {addr} with no API key (--insecure-no-auth): anyone who can reach it \
             can run jobs"
        );
        Ok(())
    }
}

/// `origin` as an `Origin` header value, checked to be one (browsers send no path).
fn origin_header(origin: &str) -> Result<HeaderValue> {
    let Some((scheme, rest)) = origin.split_once("://") else {
        bail!("--allow-origin `{origin}`: an origin is scheme://host[:port]");
    };
    if !matches!(scheme, "http" | "https") || rest.is_empty() || rest.contains('/') {
        bail!("--allow-origin `{origin}`: an origin is http(s)://host[:port], with no path");
    }
    HeaderValue::from_str(origin)
        .map_err(|_| anyhow::anyhow!("--allow-origin `{origin}` is not a header value"))
}

impl AccessPolicy {
    /// The CORS layer for the named origins, if any were.
    pub fn cors(&self) -> Option<CorsLayer> {
        self.cors.clone()
    }

    /// Whether a request naming `host` (a Host header: name or address, maybe a port) is
    /// answered.
    fn host_allowed(&self, host: &str) -> bool {
        if self.any_host {
            return true;
        }
        let name = host_name(host).trim_end_matches('.').to_ascii_lowercase();
        name.parse::<IpAddr>().is_ok()
            || name == "localhost"
            || name.ends_with(".localhost")
            || self.hosts.contains(&name)
    }

    /// Whether `authorization` (the header, if sent) holds the key, when one is needed.
    fn authorized(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(key) = &self.api_key else {
            return true;
        };
        authorization
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|sent| same_secret(sent.trim().as_bytes(), key.as_bytes()))
    }
}

/// The name or address of a Host header, without its port or an IPv6 address's brackets.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(address, _)| address);
    }
    host.rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(host, |(name, _)| name)
}

/// `a == b` in a time that does not depend on where they differ.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// Refuses a request for a host the server is not known by (421) and, with an API key, one
/// that would change state without it (401).
pub async fn check(policy: Arc<AccessPolicy>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().authority().map(|a| a.as_str().to_owned()));
    // A request with no Host at all is no browser's (they always send one).
    if let Some(host) = host
        && !policy.host_allowed(&host)
    {
        return refuse(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "this server does not answer for the host `{host}`; start it with \
                 `serve --allow-host {}` to reach it by that name",
                host_name(&host)
            ),
        );
    }
    let reads = matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if !reads && !policy.authorized(request.headers().get(header::AUTHORIZATION)) {
        let mut response = refuse(
            StatusCode::UNAUTHORIZED,
            "this server needs its API key to run or cancel jobs: send \
             `Authorization: Bearer KEY` (the key it was started with, serve --api-key)"
                .to_owned(),
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    next.run(request).await
}

fn refuse(status: StatusCode, error: String) -> Response {
    (status, axum::Json(serde_json::json!({ "error": error }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(hosts: &[&str], key: Option<&str>) -> AccessPolicy {
        Access {
            allow_hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            allow_origins: Vec::new(),
            api_key: key.map(str::to_owned),
            insecure_no_auth: false,
        }
        .policy()
        .unwrap()
    }

    #[test]
    fn beyond_loopback_needs_a_key_or_the_insecure_flag() {
        let addr = |a: &str| a.parse::<SocketAddr>().unwrap();
        let open = Access::default();
        for loopback in ["127.0.0.1:8080", "[::1]:0", "127.0.0.2:80"] {
            open.check_listen(addr(loopback)).unwrap();
        }
        for beyond in ["0.0.0.0:8080", "[::]:8080", "192.168.1.5:80"] {
            let e = open.check_listen(addr(beyond)).unwrap_err().to_string();
            assert!(
                e.contains("--api-key") && e.contains("--insecure-no-auth"),
                "{e}"
            );
            Access {
                api_key: Some("k".into()),
                ..Access::default()
            }
            .check_listen(addr(beyond))
            .unwrap();
            Access {
                insecure_no_auth: true,
                ..Access::default()
            }
            .check_listen(addr(beyond))
            .unwrap();
        }
    }

    #[test]
    fn hosts_by_address_localhost_and_name() {
        let p = policy(&["lens.example.org"], None);
        for host in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "[::1]:8080",
            "[::1]",
            "10.0.0.7:80",
            "localhost:8080",
            "LOCALHOST",
            "app.localhost:3000",
            "lens.example.org",
            "Lens.Example.Org.:8080",
        ] {
            assert!(p.host_allowed(host), "{host} refused");
        }
        for host in [
            "attacker.example.com",
            "attacker.example.com:8080",
            "localhost.attacker.com",
            "127.0.0.1.nip.io",
            "lens.example.org.attacker.com",
            "",
        ] {
            assert!(!p.host_allowed(host), "{host} answered");
        }
        assert!(policy(&["*"], None).host_allowed("anything.example.com"));
    }

    #[test]
    fn key_needs_the_exact_bearer() {
        let p = policy(&[], Some("s3cret"));
        let header = |v: &str| HeaderValue::from_str(v).unwrap();
        assert!(p.authorized(Some(&header("Bearer s3cret"))));
        assert!(!p.authorized(Some(&header("Bearer s3cre"))));
        assert!(!p.authorized(Some(&header("Bearer s3cretx"))));
        assert!(!p.authorized(Some(&header("s3cret"))));
        assert!(!p.authorized(None));
        assert!(policy(&[], None).authorized(None));
    }

    #[test]
    fn origins_are_checked() {
        let access = |o: &str| Access {
            allow_origins: vec![o.to_owned()],
            ..Access::default()
        };
        assert!(
            access("https://example.org")
                .policy()
                .unwrap()
                .cors()
                .is_some()
        );
        assert!(access("*").policy().is_ok());
        let err = access("example.org").policy().unwrap_err().to_string();
        assert!(err.contains("`example.org`"), "{err}");
        assert!(access("https://example.org/app").policy().is_err());
        assert!(Access::default().policy().unwrap().cors().is_none());
    }
}
