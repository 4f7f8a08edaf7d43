//! Certificates and TLS 1.3 settings for mutual TLS between nodes.
//!
//! Each cluster has its own CA. A node's certificate carries the DNS name
//! `node-<id>.themis` (see [`node_dns_name`]): the dialer asks for that name, so the TLS
//! handshake itself proves it reached the node it meant to, and the acceptor reads the
//! dialer's node id from the same field of the client certificate.
//!
//! Only TLS 1.3 is offered, with the `ring` provider.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use themis_clock::NodeId;

use crate::error::ShipError;

/// The DNS name a node's certificate carries and a dialer asks for.
#[must_use]
pub fn node_dns_name(node: NodeId) -> String {
    format!("node-{}.themis", node.0)
}

/// A certificate and its private key, PEM-encoded.
#[derive(Clone, PartialEq, Eq)]
pub struct CertPem {
    /// The certificate.
    pub cert: String,
    /// The private key (PKCS#8).
    pub key: String,
}

impl std::fmt::Debug for CertPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("CertPem").field("cert", &self.cert).field("key", &"<redacted>").finish()
    }
}

fn cert_err(what: &str, e: impl std::fmt::Display) -> ShipError {
    ShipError::Certificate(format!("{what}: {e}"))
}

/// Makes a new CA for `cluster` (its common name).
pub fn generate_ca(cluster: &str) -> Result<CertPem, ShipError> {
    let mut params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| cert_err("CA parameters", e))?;
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("themis cluster {cluster} CA"));
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let key = rcgen::KeyPair::generate().map_err(|e| cert_err("CA key", e))?;
    let cert = params.self_signed(&key).map_err(|e| cert_err("CA certificate", e))?;
    Ok(CertPem { cert: cert.pem(), key: key.serialize_pem() })
}

/// Issues a certificate for `node`, signed by `ca`, valid for client and server use.
/// `extra_names` adds DNS names or IP addresses (for tools that connect by address).
///
/// The node's key is Ed25519: the same key signs the node's Raft votes, so its peers take
/// the vote key from the certificate the CA signed ([`ed25519_public_key`]), never from a
/// message.
pub fn issue_node_cert(ca: &CertPem, node: NodeId, extra_names: &[String]) -> Result<CertPem, ShipError> {
    let usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    node_leaf(ca, node, extra_names, &rcgen::PKCS_ED25519, usages)
}

/// A certificate for `node` (its DNS name and `extra_names`) with a new key of `alg`,
/// signed by `ca`, for the `usages` given.
fn node_leaf(
    ca: &CertPem,
    node: NodeId,
    extra_names: &[String],
    alg: &'static rcgen::SignatureAlgorithm,
    usages: Vec<rcgen::ExtendedKeyUsagePurpose>,
) -> Result<CertPem, ShipError> {
    let ca_key = rcgen::KeyPair::from_pem(&ca.key).map_err(|e| cert_err("CA key", e))?;
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&ca.cert, ca_key).map_err(|e| cert_err("CA certificate", e))?;
    let mut names = vec![node_dns_name(node)];
    names.extend(extra_names.iter().cloned());
    let mut params =
        rcgen::CertificateParams::new(names).map_err(|e| cert_err("node certificate names", e))?;
    params.distinguished_name.push(rcgen::DnType::CommonName, node_dns_name(node));
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = usages;
    params.use_authority_key_identifier_extension = true;
    let key = rcgen::KeyPair::generate_for(alg).map_err(|e| cert_err("node key", e))?;
    let cert = params.signed_by(&key, &issuer).map_err(|e| cert_err("node certificate", e))?;
    Ok(CertPem { cert: cert.pem(), key: key.serialize_pem() })
}

/// Issues a server certificate for a node's HTTP admin API and dashboard, signed by `ca`:
/// ECDSA P-256, for server authentication only. Browsers do not accept the Ed25519 node
/// certificate ([`issue_node_cert`]), whose key must stay Ed25519 because it signs votes;
/// this one lets them connect. `extra_names` as for [`issue_node_cert`].
pub fn issue_web_cert(ca: &CertPem, node: NodeId, extra_names: &[String]) -> Result<CertPem, ShipError> {
    let usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    node_leaf(ca, node, extra_names, &rcgen::PKCS_ECDSA_P256_SHA256, usages)
}

/// Issues a client certificate for the client and admin APIs, signed by `ca`: its
/// subject is `CN=<name>, OU=<role>` (the node maps the role to what it may do; see
/// [`client_subject`]), valid for client authentication only.
pub fn issue_client_cert(ca: &CertPem, name: &str, role: &str) -> Result<CertPem, ShipError> {
    let printable = |s: &str| !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_graphic());
    if !printable(name) || !printable(role) {
        return Err(ShipError::Certificate(format!(
            "client certificate {name:?} with role {role:?}: name and role must be 1 to 64 printable ASCII characters"
        )));
    }
    let ca_key = rcgen::KeyPair::from_pem(&ca.key).map_err(|e| cert_err("CA key", e))?;
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&ca.cert, ca_key).map_err(|e| cert_err("CA certificate", e))?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|e| cert_err("client certificate parameters", e))?;
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.distinguished_name.push(rcgen::DnType::OrganizationalUnitName, role);
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let key = rcgen::KeyPair::generate().map_err(|e| cert_err("client key", e))?;
    let cert = params.signed_by(&key, &issuer).map_err(|e| cert_err("client certificate", e))?;
    Ok(CertPem { cert: cert.pem(), key: key.serialize_pem() })
}

/// The `(name, role)` a client certificate's subject carries: its one common name and its
/// one organizational unit (as [`issue_client_cert`] writes them).
pub fn client_subject(cert: &CertificateDer<'_>) -> Result<(String, String), String> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| format!("unparsable certificate: {e}"))?;
    let subject = parsed.subject();
    let name = one_attribute(subject.iter_common_name(), "common name (CN)")?;
    let role = one_attribute(subject.iter_organizational_unit(), "organizational unit (OU) naming a role")?;
    Ok((name, role))
}

/// The value of the one attribute `values` yields (`what` names it in the error).
fn one_attribute<'a>(
    mut values: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
    what: &str,
) -> Result<String, String> {
    match (values.next(), values.next()) {
        (Some(v), None) => {
            v.as_str().map(str::to_string).map_err(|e| format!("the subject's {what} is not text: {e}"))
        }
        (None, _) => Err(format!("the certificate subject has no {what}")),
        (Some(_), Some(_)) => Err(format!("the certificate subject has more than one {what}")),
    }
}

/// The Ed25519 public key a certificate certifies (32 bytes), or why it has none.
pub fn ed25519_public_key(cert: &CertificateDer<'_>) -> Result<Vec<u8>, String> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| format!("unparsable certificate: {e}"))?;
    let spki = parsed.public_key();
    if spki.algorithm.algorithm != x509_parser::oid_registry::OID_SIG_ED25519 {
        return Err(format!(
            "its key is not Ed25519 (algorithm {}); issue node certificates with `themis certs`",
            spki.algorithm.algorithm
        ));
    }
    let key = spki.subject_public_key.data.to_vec();
    if key.len() != 32 {
        return Err(format!("its Ed25519 key has {} bytes, not 32", key.len()));
    }
    Ok(key)
}

/// The node id a certificate names in its `node-<id>.themis` DNS name, if exactly one.
pub fn node_id_of(cert: &CertificateDer<'_>) -> Result<NodeId, String> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| format!("unparsable certificate: {e}"))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| format!("bad subject alternative names: {e}"))?
        .ok_or("the certificate has no subject alternative names")?;
    let mut ids = san.value.general_names.iter().filter_map(|name| match name {
        x509_parser::extensions::GeneralName::DNSName(dns) => {
            dns.strip_prefix("node-")?.strip_suffix(".themis")?.parse::<u64>().ok()
        }
        _ => None,
    });
    match (ids.next(), ids.next()) {
        (Some(id), None) => Ok(NodeId(id)),
        (None, _) => Err("the certificate names no node-<id>.themis".into()),
        (Some(_), Some(_)) => Err("the certificate names more than one node".into()),
    }
}

/// The TLS settings of one node: its certificate and key, and the cluster CA it trusts.
#[derive(Clone)]
pub struct TlsConfig {
    node: NodeId,
    /// The node certificate (the leaf) and its key, PKCS#8 DER when it is PKCS#8.
    leaf: CertificateDer<'static>,
    pkcs8: Option<Arc<[u8]>>,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    /// For the client API: this node's certificate; a client certificate from the cluster
    /// CA is asked for but not required (clients may authenticate with a token instead).
    client_api: Arc<ServerConfig>,
    /// The cluster CA, for acceptors with another server certificate.
    roots: Arc<RootCertStore>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig").field("node", &self.node).finish_non_exhaustive()
    }
}

/// TLS 1.3 server settings for the client and admin APIs: `chain` and `key` presented, a
/// client certificate from `roots` asked for and verified, but not required (clients may
/// authenticate with a token instead).
fn api_server(
    roots: &Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<ServerConfig, ShipError> {
    let optional = WebPkiClientVerifier::builder_with_provider(Arc::clone(roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| cert_err("client verifier", e))?;
    ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| cert_err("TLS 1.3", e))?
        .with_client_cert_verifier(optional)
        .with_single_cert(chain, key)
        .map_err(|e| cert_err("certificate and key", e))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsConfig {
    /// Builds the settings from PEM text: the cluster CA certificate, the node's
    /// certificate (chain) and its private key. The node id is read from the certificate.
    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<TlsConfig, ShipError> {
        let ca: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| cert_err("CA certificate PEM", e))?;
        if ca.is_empty() {
            return Err(ShipError::Certificate("the CA file holds no certificate".into()));
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| cert_err("node certificate PEM", e))?;
        let Some(leaf) = chain.first() else {
            return Err(ShipError::Certificate("the certificate file holds no certificate".into()));
        };
        let node = node_id_of(leaf).map_err(|e| cert_err("node certificate", e))?;
        let leaf = leaf.clone();
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| cert_err("private key PEM", e))?;
        let pkcs8 = match &key {
            PrivateKeyDer::Pkcs8(der) => Some(Arc::from(der.secret_pkcs8_der())),
            _ => None,
        };
        let mut roots = RootCertStore::empty();
        for cert in ca {
            roots.add(cert).map_err(|e| cert_err("CA certificate", e))?;
        }
        let roots = Arc::new(roots);
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), provider())
            .build()
            .map_err(|e| cert_err("client verifier", e))?;
        let server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| cert_err("TLS 1.3", e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| cert_err("node certificate and key", e))?;
        let client_api = api_server(&roots, chain.clone(), key.clone_key())?;
        let server_verifier = WebPkiServerVerifier::builder_with_provider(Arc::clone(&roots), provider())
            .build()
            .map_err(|e| cert_err("server verifier", e))?;
        let client = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| cert_err("TLS 1.3", e))?
            .with_webpki_verifier(server_verifier)
            .with_client_auth_cert(chain, key)
            .map_err(|e| cert_err("node certificate and key", e))?;
        Ok(TlsConfig {
            node,
            leaf,
            pkcs8,
            server: Arc::new(server),
            client: Arc::new(client),
            client_api: Arc::new(client_api),
            roots,
        })
    }

    /// Reads the three PEM files; an error names the file that could not be read.
    pub fn from_files(ca: &Path, cert: &Path, key: &Path) -> Result<TlsConfig, ShipError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path)
                .map_err(|e| ShipError::Certificate(format!("{}: {e}", path.display())))
        };
        TlsConfig::from_pem(&read(ca)?, &read(cert)?, &read(key)?)
    }

    /// The node id the certificate names.
    #[must_use]
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The node's certificate (the leaf of its chain).
    #[must_use]
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.leaf
    }

    /// The node's private key as PKCS#8 DER (what `themis certs` writes), for signing with
    /// the identity the certificate binds (Raft votes); `None` for a SEC1 or PKCS#1 key.
    #[must_use]
    pub fn private_key_pkcs8(&self) -> Option<&[u8]> {
        self.pkcs8.as_deref()
    }

    /// A TLS 1.3 acceptor for the client API: this node's certificate. Clients authenticate
    /// the node by the cluster CA; they may present a client certificate from the same CA
    /// ([`issue_client_cert`]), which the acceptor verifies, or none.
    #[must_use]
    pub fn client_api_acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(Arc::clone(&self.client_api))
    }

    /// An acceptor like [`client_api_acceptor`](Self::client_api_acceptor) that presents
    /// another server certificate (PEM chain and key), such as the admin API's
    /// browser-compatible one ([`issue_web_cert`]).
    pub fn acceptor_with_cert(
        &self,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<tokio_rustls::TlsAcceptor, ShipError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| cert_err("certificate PEM", e))?;
        if chain.is_empty() {
            return Err(ShipError::Certificate("the certificate PEM holds no certificate".into()));
        }
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| cert_err("private key PEM", e))?;
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(api_server(&self.roots, chain, key)?)))
    }

    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(Arc::clone(&self.server))
    }

    pub(crate) fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(Arc::clone(&self.client))
    }

    pub(crate) fn server_name(node: NodeId) -> ServerName<'static> {
        ServerName::try_from(node_dns_name(node)).expect("node-<id>.themis is a valid DNS name")
    }
}

/// A TLS 1.3 connector for clients of the node API that trusts only the cluster CA in
/// `ca_pem` and presents no client certificate.
pub fn client_api_connector(ca_pem: &str) -> Result<tokio_rustls::TlsConnector, ShipError> {
    client_api_connector_as(ca_pem, None)
}

/// [`client_api_connector`] presenting `identity` (a client certificate chain and its key,
/// PEM) when given.
pub fn client_api_connector_as(
    ca_pem: &str,
    identity: Option<&CertPem>,
) -> Result<tokio_rustls::TlsConnector, ShipError> {
    let mut roots = RootCertStore::empty();
    let mut any = false;
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| cert_err("CA certificate PEM", e))?;
        roots.add(cert).map_err(|e| cert_err("CA certificate", e))?;
        any = true;
    }
    if !any {
        return Err(ShipError::Certificate("the CA file holds no certificate".into()));
    }
    let client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| cert_err("TLS 1.3", e))?
        .with_root_certificates(roots);
    let client = match identity {
        None => client.with_no_client_auth(),
        Some(identity) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(identity.cert.as_bytes())
                    .collect::<Result<_, _>>()
                    .map_err(|e| cert_err("client certificate PEM", e))?;
            if chain.is_empty() {
                return Err(ShipError::Certificate(
                    "the client certificate file holds no certificate".into(),
                ));
            }
            let key = PrivateKeyDer::from_pem_slice(identity.key.as_bytes())
                .map_err(|e| cert_err("client private key PEM", e))?;
            client.with_client_auth_cert(chain, key).map_err(|e| cert_err("client certificate and key", e))?
        }
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(client)))
}

/// The file stem of the admin client credential [`write_cluster_certs`] writes
/// (`client-admin.pem`, `client-admin.key`).
pub const ADMIN_CLIENT: &str = "client-admin";

/// Writes a CA and a certificate per node into `dir` as `ca.pem`, `ca.key`,
/// `node-<id>.pem` and `node-<id>.key`, a browser-compatible certificate per node for its
/// admin API ([`issue_web_cert`]) as `node-<id>-web.pem` and `node-<id>-web.key`, and an admin client certificate (name `admin`,
/// role `admin`) as `client-admin.pem` and `client-admin.key` (keys readable by the owner
/// only).
pub fn write_cluster_certs(dir: &Path, cluster: &str, nodes: &[NodeId]) -> Result<CertPem, ShipError> {
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let ca = generate_ca(cluster)?;
    write_pem(dir, "ca.pem", &ca.cert, false)?;
    write_pem(dir, "ca.key", &ca.key, true)?;
    for &node in nodes {
        let names = ["localhost".to_string(), "127.0.0.1".to_string()];
        let cert = issue_node_cert(&ca, node, &names)?;
        write_pem(dir, &format!("node-{}.pem", node.0), &cert.cert, false)?;
        write_pem(dir, &format!("node-{}.key", node.0), &cert.key, true)?;
        let web = issue_web_cert(&ca, node, &names)?;
        write_pem(dir, &format!("node-{}-web.pem", node.0), &web.cert, false)?;
        write_pem(dir, &format!("node-{}-web.key", node.0), &web.key, true)?;
    }
    let admin = issue_client_cert(&ca, "admin", "admin")?;
    write_pem(dir, &format!("{ADMIN_CLIENT}.pem"), &admin.cert, false)?;
    write_pem(dir, &format!("{ADMIN_CLIENT}.key"), &admin.key, true)?;
    Ok(ca)
}

/// Issues a client certificate ([`issue_client_cert`]) from the CA in `dir` (`ca.pem`,
/// `ca.key`) and writes it there as `client-<name>.pem` and `client-<name>.key`; returns
/// the two paths.
pub fn write_client_cert(dir: &Path, name: &str, role: &str) -> Result<(PathBuf, PathBuf), ShipError> {
    let read = |file: &str| {
        let path = dir.join(file);
        std::fs::read_to_string(&path).map_err(|e| io_err(&path, e))
    };
    let ca = CertPem { cert: read("ca.pem")?, key: read("ca.key")? };
    let client = issue_client_cert(&ca, name, role)?;
    let (cert, key) = (format!("client-{name}.pem"), format!("client-{name}.key"));
    write_pem(dir, &cert, &client.cert, false)?;
    write_pem(dir, &key, &client.key, true)?;
    Ok((dir.join(cert), dir.join(key)))
}

#[allow(clippy::needless_pass_by_value, reason = "used as map_err(|e| io_err(&path, e))")]
fn io_err(path: &Path, e: std::io::Error) -> ShipError {
    ShipError::Certificate(format!("{}: {e}", path.display()))
}

/// Writes `text` to `dir/name`; a `secret` is readable by its owner only.
fn write_pem(dir: &Path, name: &str, text: &str, secret: bool) -> Result<(), ShipError> {
    let path = dir.join(name);
    std::fs::write(&path, text).map_err(|e| io_err(&path, e))?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| io_err(&path, e))?;
    }
    #[cfg(not(unix))]
    let _ = secret;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_web_certificate_is_ecdsa_and_serves_the_admin_api_beside_the_node_certificate() {
        let ca = generate_ca("web").unwrap();
        let node = issue_node_cert(&ca, NodeId(1), &[]).unwrap();
        let tls = TlsConfig::from_pem(&ca.cert, &node.cert, &node.key).unwrap();
        let web = issue_web_cert(&ca, NodeId(1), &["127.0.0.1".into()]).unwrap();
        let pair = rcgen::KeyPair::from_pem(&web.key).unwrap();
        assert!(pair.is_compatible(&rcgen::PKCS_ECDSA_P256_SHA256), "browsers accept P-256");
        tls.acceptor_with_cert(&web.cert, &web.key).unwrap();
        let refusal = |cert: &str, key: &str| match tls.acceptor_with_cert(cert, key) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        };
        let err = refusal("", &web.key);
        assert!(err.contains("no certificate"), "{err}");
        let err = refusal(&web.cert, &node.key);
        assert!(err.contains("certificate and key"), "a key that is not the certificate's: {err}");
    }

    #[test]
    fn node_certificates_carry_their_id_and_build_a_config() {
        let ca = generate_ca("test").unwrap();
        let cert = issue_node_cert(&ca, NodeId(42), &[]).unwrap();
        let tls = TlsConfig::from_pem(&ca.cert, &cert.cert, &cert.key).unwrap();
        assert_eq!(tls.node(), NodeId(42));
        assert!(!format!("{cert:?}").contains("PRIVATE KEY"), "keys are not printed");
    }

    #[test]
    fn a_node_certificate_certifies_its_ed25519_key_and_others_certify_none() {
        let ca = generate_ca("c").unwrap();
        let node = issue_node_cert(&ca, NodeId(4), &[]).unwrap();
        let tls = TlsConfig::from_pem(&ca.cert, &node.cert, &node.key).unwrap();
        let key = ed25519_public_key(tls.certificate()).unwrap();
        assert_eq!(key.len(), 32);
        // The PKCS#8 key is the certificate's.
        let der = tls.private_key_pkcs8().expect("PKCS#8");
        let pair = rcgen::KeyPair::try_from(der).unwrap();
        assert_eq!(pair.public_key_raw(), key.as_slice());
        assert!(pair.is_compatible(&rcgen::PKCS_ED25519));
        // The CA's key is ECDSA: it certifies no Ed25519 key.
        let ca_der = CertificateDer::from_pem_slice(ca.cert.as_bytes()).unwrap();
        let err = ed25519_public_key(&ca_der).unwrap_err();
        assert!(err.contains("not Ed25519"), "{err}");
    }

    #[test]
    fn client_certificates_carry_their_name_and_role() {
        let ca = generate_ca("test").unwrap();
        let client = issue_client_cert(&ca, "alice", "write").unwrap();
        let der = CertificateDer::from_pem_slice(client.cert.as_bytes()).unwrap();
        assert_eq!(client_subject(&der).unwrap(), ("alice".to_string(), "write".to_string()));
        client_api_connector_as(&ca.cert, Some(&client)).unwrap();
        // A node certificate names no role.
        let node = issue_node_cert(&ca, NodeId(1), &[]).unwrap();
        let der = CertificateDer::from_pem_slice(node.cert.as_bytes()).unwrap();
        assert!(client_subject(&der).unwrap_err().contains("organizational unit"));
        for (name, role) in [("", "admin"), ("bob", ""), ("a b", "admin"), ("bob", &"r".repeat(65))] {
            assert!(issue_client_cert(&ca, name, role).is_err(), "{name:?} {role:?}");
        }
        let bad = CertPem { cert: String::new(), key: client.key.clone() };
        let Err(err) = client_api_connector_as(&ca.cert, Some(&bad)) else {
            panic!("an empty chain was accepted")
        };
        assert!(err.to_string().contains("no certificate"), "{err}");
    }

    #[test]
    fn bad_pem_is_a_certificate_error() {
        let ca = generate_ca("test").unwrap();
        let cert = issue_node_cert(&ca, NodeId(1), &[]).unwrap();
        for (ca_pem, cert_pem, key_pem, needle) in [
            ("", cert.cert.as_str(), cert.key.as_str(), "CA file holds no certificate"),
            (ca.cert.as_str(), "", cert.key.as_str(), "holds no certificate"),
            (ca.cert.as_str(), cert.cert.as_str(), "nonsense", "private key"),
            (ca.cert.as_str(), ca.cert.as_str(), ca.key.as_str(), "no subject alternative names"),
        ] {
            let err = TlsConfig::from_pem(ca_pem, cert_pem, key_pem).unwrap_err();
            assert!(err.to_string().contains(needle), "{err}");
        }
        let err = TlsConfig::from_files(Path::new("/nonexistent/ca.pem"), Path::new("x"), Path::new("y"))
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}
