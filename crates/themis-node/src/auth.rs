//! Authentication and roles: one module for every API a node serves (the client
//! protocol and the HTTP admin API today; CDC streams, slots and links will use it too).
//!
//! A caller proves who it is in one of two ways:
//!
//! - **mutual TLS**: a client certificate signed by the cluster CA whose subject is
//!   `CN=<name>, OU=<role>` (`themis certs --client NAME --role ROLE` issues one);
//! - **a signed JWT** (`Authorization: Bearer <token>` over HTTP, `Request::Authenticate`
//!   over the client protocol), HS256 or `EdDSA` with the key from `[auth]` in the node's
//!   configuration, carrying `sub` (the name), `role` and `exp` (checked, no leeway).
//!
//! Roles are ordered: `read` < `write` < `admin`. Reads and status need `read`, document
//! writes `write`, cluster operations (mode, members, transfer, elections) `admin`
//! ([`required_role`]). No or bad credentials are [`AuthError::Unauthenticated`] (HTTP
//! 401, code `unauthenticated`); a role below the one a request needs is
//! [`AuthError::Forbidden`] (HTTP 403, code `forbidden`). Under `insecure_plaintext`
//! authentication is off (every caller may do everything) and the node warns at start.
//!
//! ```
//! use themis_node::auth::{AuthSection, Authenticator, Identity, Role, hs256_token, required_role};
//! use themis_node::protocol::Request;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let secret = dir.path().join("jwt.secret");
//! std::fs::write(&secret, "an HS256 secret of at least 32 bytes.")?;
//! let section = AuthSection { jwt_hs256_secret_file: Some(secret), ..AuthSection::default() };
//! let auth = Authenticator::new(&section)?;
//!
//! let token = hs256_token(b"an HS256 secret of at least 32 bytes.", "reporting", Role::Read, 3600)?;
//! let who = Identity::Known(auth.token(&token)?);
//! let get = Request::Get { collection: "c".into(), id: "d".into(), consistency: themis_node::protocol::Consistency::Strong };
//! assert!(auth.authorize(&who, required_role(&get)).is_ok());
//! let put = Request::Put { collection: "c".into(), id: "d".into(), value: b"{}".to_vec() };
//! assert!(auth.authorize(&who, required_role(&put)).is_err()); // 403: read only
//! assert!(auth.authorize(&Identity::None, Role::Read).is_err()); // 401
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

use crate::protocol::{ErrorCode, Request, Response};

/// What a caller may do; each role allows everything the ones below it allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads documents, status and topology, and metrics.
    Read,
    /// Also writes and deletes documents.
    Write,
    /// Also changes the cluster: mode, members, leadership, elections.
    Admin,
}

impl Role {
    /// `read`, `write` or `admin`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "read" => Ok(Role::Read),
            "write" => Ok(Role::Write),
            "admin" => Ok(Role::Admin),
            other => Err(format!("role {other:?}: expected read, write or admin")),
        }
    }
}

/// How a principal proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// A client certificate from the cluster CA.
    Certificate,
    /// A signed JWT.
    Token,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The certificate's CN or the token's `sub`.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// How it proved it.
    pub method: Method,
    /// When a token stops being valid (a certificate's validity was checked by TLS).
    pub expires: Option<SystemTime>,
    /// The collections its change streams may cover (a token's `collections` claim:
    /// names or patterns); none means every collection.
    pub collections: Option<Vec<String>>,
}

impl Principal {
    /// Whether a change stream over `patterns` (empty: every collection) stays within
    /// this principal's collections: each pattern must be a name its scope matches, or
    /// one of its scope's patterns exactly.
    #[must_use]
    pub fn covers(&self, patterns: &[String]) -> bool {
        let Some(scope) = &self.collections else { return true };
        if patterns.is_empty() {
            return false;
        }
        let Ok(filter) = themis_replication::cdc::Filter::new(&[], scope) else { return false };
        patterns.iter().all(|p| {
            scope.contains(p) || (!p.contains(['*', '?', '[', '{', '\\']) && filter.matches_collection(p))
        })
    }
}

/// What is known about the caller of one connection or request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// No credentials were presented.
    None,
    /// Credentials were presented and refused; the error says why.
    Refused(AuthError),
    /// An authenticated caller.
    Known(Principal),
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No credentials, or credentials that do not verify (HTTP 401).
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// The caller is known but its role does not allow the request (HTTP 403).
    #[error("forbidden: {name} has role {has}; this needs role {needs}")]
    Forbidden {
        /// The caller.
        name: String,
        /// Its role.
        has: Role,
        /// The role the request needs.
        needs: Role,
    },
}

impl AuthError {
    /// The client-protocol answer for this refusal.
    #[must_use]
    pub fn response(&self) -> Response {
        let code = match self {
            AuthError::Unauthenticated(_) => ErrorCode::Unauthenticated,
            AuthError::Forbidden { .. } => ErrorCode::Forbidden,
        };
        Response::Error { code, message: self.to_string() }
    }
}

/// The `[auth]` section of a node's configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// A file holding the HS256 secret (at least 32 bytes; surrounding whitespace is
    /// ignored) for bearer tokens.
    pub jwt_hs256_secret_file: Option<PathBuf>,
    /// A PEM file holding the Ed25519 public key (SPKI) for `EdDSA` bearer tokens.
    pub jwt_ed25519_public_key_file: Option<PathBuf>,
    /// When set, a token's `aud` must name it.
    pub jwt_audience: Option<String>,
    /// When set, a token's `iss` must be it.
    pub jwt_issuer: Option<String>,
    /// Serve `GET /metrics` without credentials (default false).
    pub metrics_open: bool,
}

/// The shortest HS256 secret accepted, in bytes (the hash's output size, as RFC 7518
/// section 3.2 asks).
pub const MIN_HS256_SECRET_BYTES: usize = 32;

/// A configuration problem of `[auth]`; names the key and the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("auth: {0}")]
pub struct AuthConfigError(pub String);

/// Checks credentials and roles for a node.
pub struct Authenticator {
    enabled: bool,
    keys: Vec<(Algorithm, DecodingKey)>,
    audience: Option<String>,
    issuer: Option<String>,
    metrics_open: bool,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let algorithms: Vec<_> = self.keys.iter().map(|(a, _)| *a).collect();
        f.debug_struct("Authenticator")
            .field("enabled", &self.enabled)
            .field("jwt_algorithms", &algorithms)
            .field("metrics_open", &self.metrics_open)
            .finish_non_exhaustive()
    }
}

/// The claims a bearer token carries.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    role: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    collections: Option<Vec<String>>,
}

fn read_key(key: &str, path: &Path) -> Result<Vec<u8>, AuthConfigError> {
    std::fs::read(path).map_err(|e| AuthConfigError(format!("{key} = {:?}: {e}", path.display().to_string())))
}

impl Authenticator {
    /// Authentication off: every caller may do everything (`insecure_plaintext`).
    #[must_use]
    pub fn disabled() -> Authenticator {
        Authenticator { enabled: false, keys: Vec::new(), audience: None, issuer: None, metrics_open: true }
    }

    /// Authentication on, with the JWT keys `section` names (read now; an error names the
    /// key and the file). Without keys only client certificates authenticate.
    pub fn new(section: &AuthSection) -> Result<Authenticator, AuthConfigError> {
        let mut keys = Vec::new();
        if let Some(path) = &section.jwt_hs256_secret_file {
            let key = "auth.jwt_hs256_secret_file";
            let bytes = read_key(key, path)?;
            let secret = bytes.trim_ascii();
            if secret.len() < MIN_HS256_SECRET_BYTES {
                return Err(AuthConfigError(format!(
                    "{key} = {:?}: the secret is {} bytes; HS256 needs at least {MIN_HS256_SECRET_BYTES}",
                    path.display().to_string(),
                    secret.len()
                )));
            }
            keys.push((Algorithm::HS256, DecodingKey::from_secret(secret)));
        }
        if let Some(path) = &section.jwt_ed25519_public_key_file {
            let key = "auth.jwt_ed25519_public_key_file";
            let pem = read_key(key, path)?;
            let decoding = DecodingKey::from_ed_pem(&pem).map_err(|e| {
                AuthConfigError(format!(
                    "{key} = {:?}: not an Ed25519 public key in PEM: {e}",
                    path.display().to_string()
                ))
            })?;
            keys.push((Algorithm::EdDSA, decoding));
        }
        Ok(Authenticator {
            enabled: true,
            keys,
            audience: section.jwt_audience.clone(),
            issuer: section.jwt_issuer.clone(),
            metrics_open: section.metrics_open,
        })
    }

    /// Whether credentials are checked at all.
    #[must_use]
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether `GET /metrics` is served without credentials.
    #[must_use]
    pub fn metrics_open(&self) -> bool {
        self.metrics_open
    }

    /// The identity a verified TLS client certificate chain gives (TLS has checked it
    /// against the cluster CA); `None` or an empty chain is [`Identity::None`].
    #[must_use]
    pub fn certificate(&self, chain: Option<&[CertificateDer<'_>]>) -> Identity {
        let Some(leaf) = chain.and_then(<[_]>::first) else { return Identity::None };
        let refused = |why: String| {
            Identity::Refused(AuthError::Unauthenticated(format!(
                "the client certificate is not usable: {why}"
            )))
        };
        match themis_replication::ship::tls::client_subject(leaf) {
            Ok((name, role)) => match role.parse::<Role>() {
                Ok(role) => Identity::Known(Principal {
                    name,
                    role,
                    method: Method::Certificate,
                    expires: None,
                    collections: None,
                }),
                Err(e) => refused(format!("its OU names {e}")),
            },
            Err(e) => refused(e),
        }
    }

    /// Verifies a bearer token: its signature under a configured key, `exp` (no leeway),
    /// `aud` and `iss` when configured, and its `role`.
    pub fn token(&self, token: &str) -> Result<Principal, AuthError> {
        let bad = |why: String| AuthError::Unauthenticated(format!("the bearer token is refused: {why}"));
        if self.keys.is_empty() {
            return Err(bad(
                "this node has no JWT key configured ([auth] jwt_*); use a client certificate".into()
            ));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| bad(e.to_string()))?;
        let Some((alg, key)) = self.keys.iter().find(|(alg, _)| *alg == header.alg) else {
            let known: Vec<String> = self.keys.iter().map(|(a, _)| format!("{a:?}")).collect();
            return Err(bad(format!(
                "it is signed with {:?}; this node accepts {}",
                header.alg,
                known.join(", ")
            )));
        };
        let mut validation = Validation::new(*alg);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
        }
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| bad(e.to_string()))?;
        let role = data.claims.role.parse::<Role>().map_err(|e| bad(format!("its claim {e}")))?;
        Ok(Principal {
            name: data.claims.sub,
            role,
            method: Method::Token,
            collections: data.claims.collections,
            // An `exp` past what the clock can hold is refused, not a panic.
            expires: Some(
                UNIX_EPOCH
                    .checked_add(Duration::from_secs(data.claims.exp))
                    .ok_or_else(|| bad(format!("its exp {} is out of range", data.claims.exp)))?,
            ),
        })
    }

    /// Whether `who` may make a request that needs `needs`, now.
    pub fn authorize(&self, who: &Identity, needs: Role) -> Result<(), AuthError> {
        if !self.enabled {
            return Ok(());
        }
        match who {
            Identity::None => Err(AuthError::Unauthenticated(
                "no credentials: present a client certificate from the cluster CA or a bearer token".into(),
            )),
            Identity::Refused(e) => Err(e.clone()),
            Identity::Known(p) => {
                if p.expires.is_some_and(|at| at <= SystemTime::now()) {
                    return Err(AuthError::Unauthenticated(format!(
                        "the bearer token of {} has expired",
                        p.name
                    )));
                }
                if p.role < needs {
                    return Err(AuthError::Forbidden { name: p.name.clone(), has: p.role, needs });
                }
                Ok(())
            }
        }
    }
}

/// The role a client-protocol request needs.
#[must_use]
pub fn required_role(request: &Request) -> Role {
    match request {
        Request::Get { .. } | Request::Status | Request::Authenticate { .. } => Role::Read,
        Request::Put { .. } | Request::Delete { .. } | Request::WaitFor { .. } => Role::Write,
        Request::SetMode { .. }
        | Request::AddLearner { .. }
        | Request::Promote { .. }
        | Request::Remove { .. }
        | Request::Transfer { .. }
        | Request::Campaign => Role::Admin,
    }
}

/// Signs an HS256 token for `name` with `role`, valid for `ttl_secs` from now (for
/// `themis token` and tests; production tokens usually come from an identity provider).
pub fn hs256_token(secret: &[u8], name: &str, role: Role, ttl_secs: u64) -> Result<String, AuthConfigError> {
    hs256_scoped_token(secret, name, role, ttl_secs, None)
}

/// [`hs256_token`] whose change streams are limited to `collections` (names or patterns).
pub fn hs256_scoped_token(
    secret: &[u8],
    name: &str,
    role: Role,
    ttl_secs: u64,
    collections: Option<Vec<String>>,
) -> Result<String, AuthConfigError> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let claims = Claims {
        sub: name.to_string(),
        role: role.as_str().to_string(),
        exp: now.saturating_add(ttl_secs),
        collections,
    };
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.trim_ascii()),
    )
    .map_err(|e| AuthConfigError(format!("signing a token: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn with_secret() -> (tempfile::TempDir, Authenticator) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, SECRET).unwrap();
        let auth =
            Authenticator::new(&AuthSection { jwt_hs256_secret_file: Some(path), ..AuthSection::default() })
                .unwrap();
        (dir, auth)
    }

    fn sign(claims: &serde_json::Value, secret: &[u8]) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret))
            .unwrap()
    }

    fn now() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    #[test]
    fn roles_are_ordered_and_parse() {
        assert!(Role::Read < Role::Write && Role::Write < Role::Admin);
        for role in [Role::Read, Role::Write, Role::Admin] {
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        }
        assert!("root".parse::<Role>().unwrap_err().contains("expected read, write or admin"));
    }

    #[test]
    fn tokens_are_checked_for_signature_expiry_and_role() {
        let (_dir, auth) = with_secret();
        let good = auth.token(&hs256_token(SECRET, "app", Role::Write, 60).unwrap()).unwrap();
        assert_eq!((good.name.as_str(), good.role, good.method), ("app", Role::Write, Method::Token));
        let known = Identity::Known(good);
        assert!(auth.authorize(&known, Role::Write).is_ok());
        assert_eq!(
            auth.authorize(&known, Role::Admin),
            Err(AuthError::Forbidden { name: "app".into(), has: Role::Write, needs: Role::Admin })
        );
        let refused = |token: &str, needle: &str| {
            let err = auth.token(token).unwrap_err();
            assert!(
                matches!(err, AuthError::Unauthenticated(_)) && err.to_string().contains(needle),
                "{err}"
            );
        };
        refused(
            &sign(&serde_json::json!({"sub": "a", "role": "admin", "exp": now() - 1}), SECRET),
            "Expired",
        );
        refused(
            &sign(&serde_json::json!({"sub": "a", "role": "admin", "exp": now() + 60}), &[7u8; 32]),
            "Signature",
        );
        refused(
            &sign(&serde_json::json!({"sub": "a", "role": "root", "exp": now() + 60}), SECRET),
            "role \"root\"",
        );
        refused(&sign(&serde_json::json!({"sub": "a", "role": "admin"}), SECRET), "exp");
        // A validly signed exp beyond any clock is refused, not a panic.
        refused(
            &sign(&serde_json::json!({"sub": "a", "role": "admin", "exp": u64::MAX}), SECRET),
            "out of range",
        );
        assert!(hs256_token(SECRET, "a", Role::Read, u64::MAX).is_ok(), "a huge ttl saturates");
        refused("not.a.token", "refused");
        refused("", "refused");
        // An EdDSA token where only HS256 is configured.
        let ed = jsonwebtoken::encode(
            &Header::new(Algorithm::HS384),
            &serde_json::json!({"sub": "a", "role": "admin", "exp": now() + 60}),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        refused(&ed, "HS384");
        // A token that expires while its connection is open stops working.
        let short = Identity::Known(Principal {
            name: "x".into(),
            role: Role::Admin,
            method: Method::Token,
            expires: Some(SystemTime::now() - Duration::from_secs(1)),
            collections: None,
        });
        assert!(auth.authorize(&short, Role::Read).unwrap_err().to_string().contains("expired"));
    }

    #[test]
    fn no_credentials_is_unauthenticated_unless_authentication_is_off() {
        let (_dir, auth) = with_secret();
        assert!(matches!(auth.authorize(&Identity::None, Role::Read), Err(AuthError::Unauthenticated(_))));
        assert_eq!(auth.certificate(None), Identity::None);
        assert!(Authenticator::disabled().authorize(&Identity::None, Role::Admin).is_ok());
        let nokeys = Authenticator::new(&AuthSection::default()).unwrap();
        assert!(nokeys.token("x.y.z").unwrap_err().to_string().contains("no JWT key"));
    }

    #[test]
    fn bad_key_files_are_errors_naming_the_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short");
        std::fs::write(&short, "too short").unwrap();
        let err =
            Authenticator::new(&AuthSection { jwt_hs256_secret_file: Some(short), ..AuthSection::default() })
                .unwrap_err();
        assert!(
            err.to_string().contains("jwt_hs256_secret_file") && err.to_string().contains("at least 32"),
            "{err}"
        );
        let missing = dir.path().join("missing.pem");
        let err = Authenticator::new(&AuthSection {
            jwt_ed25519_public_key_file: Some(missing),
            ..AuthSection::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("missing.pem"), "{err}");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").unwrap();
        let err = Authenticator::new(&AuthSection {
            jwt_ed25519_public_key_file: Some(garbage),
            ..AuthSection::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("Ed25519"), "{err}");
    }

    #[test]
    fn certificates_give_their_subject_and_a_node_certificate_is_refused() {
        use rustls_pki_types::pem::PemObject;
        use themis_replication::ship::tls::{generate_ca, issue_client_cert, issue_node_cert};
        let (_dir, auth) = with_secret();
        let ca = generate_ca("t").unwrap();
        let der = |pem: &str| CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let reader = der(&issue_client_cert(&ca, "dash", "read").unwrap().cert);
        let Identity::Known(p) = auth.certificate(Some(&[reader])) else { panic!("not known") };
        assert_eq!((p.name.as_str(), p.role, p.method), ("dash", Role::Read, Method::Certificate));
        let root = der(&issue_client_cert(&ca, "x", "root").unwrap().cert);
        let Identity::Refused(e) = auth.certificate(Some(&[root])) else { panic!("accepted") };
        assert!(e.to_string().contains("root"), "{e}");
        let node = der(&issue_node_cert(&ca, themis_replication::clock::NodeId(1), &[]).unwrap().cert);
        assert!(matches!(auth.certificate(Some(&[node])), Identity::Refused(_)));
    }
}
