//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;

use themis_clock::NodeId;
use themis_ship::tls::{CertPem, TlsConfig, generate_ca, issue_node_cert};
use themis_ship::transport::{Members, Security, Transport, TransportConfig};

/// A cluster CA and the TLS settings of nodes under it.
pub struct Pki {
    pub ca: CertPem,
}

impl Pki {
    pub fn new() -> Pki {
        Pki { ca: generate_ca("test").unwrap() }
    }

    pub fn tls(&self, node: u64) -> TlsConfig {
        let cert = issue_node_cert(&self.ca, NodeId(node), &[]).unwrap();
        TlsConfig::from_pem(&self.ca.cert, &cert.cert, &cert.key).unwrap()
    }

    pub fn transport(&self, node: u64, members: &[u64]) -> Transport {
        transport(node, Security::Tls(self.tls(node)), members)
    }
}

pub fn transport(node: u64, security: Security, members: &[u64]) -> Transport {
    let config = TransportConfig::new("test", NodeId(node), security);
    Transport::new(config, Members::new(members.iter().map(|&n| NodeId(n)))).unwrap()
}

pub fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}
