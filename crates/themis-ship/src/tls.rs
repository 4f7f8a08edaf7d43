//! Certificates and TLS 1.3 settings for mutual TLS between nodes.
//!
//! Each cluster has its own CA. A node's certificate carries the DNS name
//! `node-<id>.themis` (see [`node_dns_name`]): the dialer asks for that name, so the TLS
//! handshake itself proves it reached the node it meant to, and the acceptor reads the
//! dialer's node id from the same field of the client certificate.
//!
//! Only TLS 1.3 is offered, with the `ring` provider.

use std::path::Path;
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
pub fn issue_node_cert(ca: &CertPem, node: NodeId, extra_names: &[String]) -> Result<CertPem, ShipError> {
    let ca_key = rcgen::KeyPair::from_pem(&ca.key).map_err(|e| cert_err("CA key", e))?;
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&ca.cert, ca_key).map_err(|e| cert_err("CA certificate", e))?;
    let mut names = vec![node_dns_name(node)];
    names.extend(extra_names.iter().cloned());
    let mut params =
        rcgen::CertificateParams::new(names).map_err(|e| cert_err("node certificate names", e))?;
    params.distinguished_name.push(rcgen::DnType::CommonName, node_dns_name(node));
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let key = rcgen::KeyPair::generate().map_err(|e| cert_err("node key", e))?;
    let cert = params.signed_by(&key, &issuer).map_err(|e| cert_err("node certificate", e))?;
    Ok(CertPem { cert: cert.pem(), key: key.serialize_pem() })
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
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    /// For the client API: this node's certificate, no client certificate asked.
    client_api: Arc<ServerConfig>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig").field("node", &self.node).finish_non_exhaustive()
    }
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
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| cert_err("private key PEM", e))?;
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
        let client_api = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| cert_err("TLS 1.3", e))?
            .with_no_client_auth()
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| cert_err("node certificate and key", e))?;
        let server_verifier = WebPkiServerVerifier::builder_with_provider(roots, provider())
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
            server: Arc::new(server),
            client: Arc::new(client),
            client_api: Arc::new(client_api),
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

    /// A TLS 1.3 acceptor for the client API: this node's certificate; clients are not
    /// asked for one (they authenticate the node by the cluster CA).
    #[must_use]
    pub fn client_api_acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(Arc::clone(&self.client_api))
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
/// `ca_pem`.
pub fn client_api_connector(ca_pem: &str) -> Result<tokio_rustls::TlsConnector, ShipError> {
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
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(client)))
}

/// Writes a CA and a certificate per node into `dir` as `ca.pem`, `ca.key`,
/// `node-<id>.pem` and `node-<id>.key` (keys readable by the owner only).
pub fn write_cluster_certs(dir: &Path, cluster: &str, nodes: &[NodeId]) -> Result<CertPem, ShipError> {
    let io = |path: &Path, e: std::io::Error| ShipError::Certificate(format!("{}: {e}", path.display()));
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let ca = generate_ca(cluster)?;
    let write = |name: String, text: &str, secret: bool| -> Result<(), ShipError> {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| io(&path, e))?;
        #[cfg(unix)]
        if secret {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| io(&path, e))?;
        }
        #[cfg(not(unix))]
        let _ = secret;
        Ok(())
    };
    write("ca.pem".into(), &ca.cert, false)?;
    write("ca.key".into(), &ca.key, true)?;
    for &node in nodes {
        let cert = issue_node_cert(&ca, node, &["localhost".into(), "127.0.0.1".into()])?;
        write(format!("node-{}.pem", node.0), &cert.cert, false)?;
        write(format!("node-{}.key", node.0), &cert.key, true)?;
    }
    Ok(ca)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_certificates_carry_their_id_and_build_a_config() {
        let ca = generate_ca("test").unwrap();
        let cert = issue_node_cert(&ca, NodeId(42), &[]).unwrap();
        let tls = TlsConfig::from_pem(&ca.cert, &cert.cert, &cert.key).unwrap();
        assert_eq!(tls.node(), NodeId(42));
        assert!(!format!("{cert:?}").contains("PRIVATE KEY"), "keys are not printed");
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
