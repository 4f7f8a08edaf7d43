//! [`ShipNetwork`]: the driver's [`Network`] over themis-ship peer links (mutual TLS 1.3
//! between members of one cluster CA, or plaintext under `Security::InsecurePlaintext`).

use std::time::Duration;

use bytes::Bytes;
use themis_clock::NodeId;
use themis_ship::transport::{Incoming, Listener};
use themis_ship::{PeerConfig, PeerSender, SendError, Transport, serve_messages};
use tokio::task::AbortHandle;

use crate::driver::{DriverError, PeerInfo};
use crate::io::{Inbox, Link, LinkCounters, LinkError, Network};
use crate::signing::SharedVotes;

/// The provided [`Network`]: links dialled with a themis-ship [`Transport`], and a
/// [`Listener`] whose accepted links deliver to the driver.
///
/// Each peer's vote key is bound when its link is accepted: under TLS it is the key its
/// certificate certifies (the hello's is ignored); under `InsecurePlaintext` the hello's,
/// trusted on first use.
#[derive(Debug)]
pub struct ShipNetwork {
    transport: Transport,
    listener: Option<Listener>,
    peer: PeerConfig,
}

impl ShipNetwork {
    /// A network that dials with `transport` and accepts on `listener` (bound with the
    /// same transport), with link settings `peer`.
    pub fn new(
        transport: Transport,
        listener: Listener,
        peer: PeerConfig,
    ) -> Result<ShipNetwork, DriverError> {
        peer.validate().map_err(|e| DriverError::Config(format!("peer links: {e}")))?;
        Ok(ShipNetwork { transport, listener: Some(listener), peer })
    }

    /// The transport links are dialled with.
    #[must_use]
    pub fn transport(&self) -> &Transport {
        &self.transport
    }
}

impl Network for ShipNetwork {
    type Link = PeerSender;

    fn max_message_bytes(&self) -> usize {
        self.transport.config().max_frame
    }

    fn serve(&mut self, inbox: Inbox, votes: SharedVotes) -> Result<AbortHandle, DriverError> {
        let listener = self
            .listener
            .take()
            .ok_or_else(|| DriverError::Config("the network is already serving".into()))?;
        // Plaintext peers learn this node's vote key from its hello.
        self.peer.hello_extra = Bytes::from(votes.public_key());
        Ok(tokio::spawn(accept_loop(listener, inbox, self.peer.clone(), votes)).abort_handle())
    }

    fn connect(&mut self, peer: &PeerInfo, seed: u64) -> Result<PeerSender, DriverError> {
        PeerSender::spawn(self.transport.clone(), peer.id, peer.raft_addr, self.peer.clone(), seed)
            .map(|(sender, _task)| sender)
            .map_err(|e| DriverError::Config(format!("the link to node {}: {e}", peer.id)))
    }

    fn admit(&mut self, node: NodeId, member: bool) {
        if member {
            self.transport.members().add(node);
        } else {
            self.transport.members().remove(node);
        }
    }
}

impl Link for PeerSender {
    fn try_send(&self, message: Bytes) -> Result<(), LinkError> {
        PeerSender::try_send(self, message).map_err(|e| match e {
            SendError::Full { peer, .. } => LinkError::Full { peer },
            SendError::Closed { peer } => LinkError::Closed { peer },
            // A failure this driver does not know: the link is redialled.
            _ => LinkError::Closed { peer: self.peer() },
        })
    }

    fn is_closed(&self) -> bool {
        PeerSender::is_closed(self)
    }

    fn counters(&self) -> LinkCounters {
        let status = self.status();
        LinkCounters {
            sent_msgs: status.sent_msgs,
            payload_bytes: status.payload_bytes,
            wire_bytes: status.wire_bytes,
        }
    }
}

async fn accept_loop(listener: Listener, deliver: Inbox, config: PeerConfig, votes: SharedVotes) {
    loop {
        let pending = match listener.accept().await {
            Ok(p) => p,
            Err(err) => {
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let (deliver, config, votes) = (deliver.clone(), config.clone(), votes.clone());
        tokio::spawn(async move {
            let incoming = match pending.handshake().await {
                Ok(incoming) => incoming,
                Err(err) => {
                    tracing::warn!(error = %err, "refused a peer link");
                    return;
                }
            };
            bind_vote_key(&votes, &incoming);
            if let Err(err) = serve_messages(incoming, deliver, &config).await {
                tracing::debug!(error = %err, "peer link ended");
            }
        });
    }
}

/// Trusts the dialer's vote key before any of its messages is read. Under TLS the key is
/// the one its certificate certifies (the CA vouches for it; mutual TLS has proved the
/// dialer holds it and is the node it names), and whatever the hello says is ignored.
/// Under `InsecurePlaintext` nothing is authenticated: the hello's key is trusted on first
/// use and a different one later is refused.
fn bind_vote_key(votes: &SharedVotes, incoming: &Incoming) {
    let node = incoming.hello.node;
    match &incoming.certificate {
        Some(cert) => match themis_ship::tls::ed25519_public_key(cert) {
            Ok(key) => {
                if let Err(err) = votes.add_peer(node, &key) {
                    tracing::warn!(peer = %node, error = %err, "the certificate's vote key is unusable");
                }
            }
            Err(reason) => {
                tracing::warn!(peer = %node, %reason, "the peer's certificate carries no vote key; its votes will not count");
            }
        },
        None => match votes.learn_peer(node, &incoming.hello.extra) {
            Ok(true) => {
                tracing::info!(peer = %node, "trusting the vote key a plaintext peer sent, on first use");
            }
            Ok(false) => {}
            Err(err) => {
                tracing::warn!(peer = %node, error = %err, "refused a vote key from a plaintext peer");
            }
        },
    }
}
