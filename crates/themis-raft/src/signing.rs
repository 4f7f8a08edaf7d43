//! Signed votes: every vote request and answer carries an ed25519 signature over what it
//! claims, so a vote cannot be forged by a node without the voter's key, nor replayed into
//! another term or for another candidate.
//!
//! Signing is injected through [`VoteSigner`], so the core stays pure and a test can give
//! it a signer that misbehaves.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use ring::signature::{self, Ed25519KeyPair, KeyPair};
use themis_clock::NodeId;
use themis_wal::Lsn;

use crate::error::RaftError;

/// What a vote request or answer asserts. The signature covers exactly
/// [`VoteClaim::signed_bytes`]; the receiver checks the fields against the message's
/// envelope, so a valid signature from another term or candidate is recognised as a
/// replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoteClaim {
    /// The cluster the vote belongs to; a vote from another cluster never counts.
    pub cluster: String,
    /// The term of the election.
    pub term: u64,
    /// The candidate.
    pub candidate: NodeId,
    /// The voter asked (in a request) or answering (in a response).
    pub voter: NodeId,
    /// The candidate's last LSN.
    pub last_lsn: Lsn,
    /// The candidate's last term.
    pub last_term: u64,
    /// A pre-vote (dissertation §9.6) rather than a vote.
    pub pre_vote: bool,
    /// Whether this is a response.
    pub response: bool,
    /// In a response, whether the vote is granted.
    pub granted: bool,
}

/// Domain separation: a signature made for anything else never verifies as a vote.
const DOMAIN: &[u8] = b"themis-raft vote v1\0";

impl VoteClaim {
    /// The bytes the signature covers: a domain tag, then every field, little-endian, the
    /// cluster name length-prefixed.
    #[must_use]
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(DOMAIN.len() + 8 + self.cluster.len() + 8 * 5 + 1);
        out.extend_from_slice(DOMAIN);
        out.extend_from_slice(&(self.cluster.len() as u64).to_le_bytes());
        out.extend_from_slice(self.cluster.as_bytes());
        for word in [self.term, self.candidate.0, self.voter.0, self.last_lsn, self.last_term] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out.push(u8::from(self.pre_vote) | u8::from(self.response) << 1 | u8::from(self.granted) << 2);
        out
    }
}

/// A signature; empty means unsigned.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Signature(pub Vec<u8>);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("Signature(unsigned)");
        }
        write!(f, "Signature(")?;
        for byte in self.0.iter().take(4) {
            write!(f, "{byte:02x}")?;
        }
        write!(f, "..)")
    }
}

/// Signs this node's votes and verifies its peers'.
pub trait VoteSigner: Send {
    /// Signs `claim` as this node.
    fn sign(&self, claim: &VoteClaim) -> Signature;
    /// Whether `signature` is `signer`'s signature over `claim`.
    fn verify(&self, signer: NodeId, claim: &VoteClaim, signature: &Signature) -> bool;
}

/// The ed25519 [`VoteSigner`] (ring): this node's key pair and its peers' public keys.
pub struct Ed25519Votes {
    key: Ed25519KeyPair,
    peers: BTreeMap<NodeId, Vec<u8>>,
}

impl fmt::Debug for Ed25519Votes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ed25519Votes")
            .field("peers", &self.peers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The length of an ed25519 seed and of a public key.
pub const ED25519_KEY_LEN: usize = 32;

impl Ed25519Votes {
    /// A signer from this node's 32-byte secret seed. Peers are added with
    /// [`Ed25519Votes::add_peer`]; this node's own key is registered as a peer too, so a
    /// node can verify its own vote.
    pub fn from_seed(node: NodeId, seed: &[u8]) -> Result<Ed25519Votes, RaftError> {
        let key = Ed25519KeyPair::from_seed_unchecked(seed).map_err(|err| RaftError::Config {
            key: "vote_key",
            value: format!("{} bytes", seed.len()),
            reason: format!("not an ed25519 seed of {ED25519_KEY_LEN} bytes: {err}"),
        })?;
        Ok(Ed25519Votes::with_key(node, key))
    }

    /// A signer from this node's Ed25519 private key in PKCS#8 DER (the node certificate's
    /// key, so peers can take the public key from the certificate the CA signed).
    pub fn from_pkcs8(node: NodeId, der: &[u8]) -> Result<Ed25519Votes, RaftError> {
        let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|err| RaftError::Config {
            key: "vote_key",
            value: format!("a {}-byte PKCS#8 key", der.len()),
            reason: format!("not an Ed25519 private key: {err}"),
        })?;
        Ok(Ed25519Votes::with_key(node, key))
    }

    /// This node's own key is registered as a peer too, so it can verify its own vote.
    fn with_key(node: NodeId, key: Ed25519KeyPair) -> Ed25519Votes {
        let mut peers = BTreeMap::new();
        peers.insert(node, key.public_key().as_ref().to_vec());
        Ed25519Votes { key, peers }
    }

    /// This node's public key, for its peers.
    #[must_use]
    pub fn public_key(&self) -> Vec<u8> {
        self.key.public_key().as_ref().to_vec()
    }

    /// Trusts `public_key` as `node`'s vote key, replacing any earlier one: for keys from an
    /// authority (the node's CA-signed certificate, or configuration).
    pub fn add_peer(&mut self, node: NodeId, public_key: &[u8]) -> Result<(), RaftError> {
        check_public_key(node, public_key)?;
        self.peers.insert(node, public_key.to_vec());
        Ok(())
    }

    /// Trusts `public_key` as `node`'s vote key if none is known yet (trust on first use);
    /// a different key for a node already known is refused, so a key learned in-band can
    /// never be replaced in-band. `Ok(true)` when the key was new.
    pub fn learn_peer(&mut self, node: NodeId, public_key: &[u8]) -> Result<bool, RaftError> {
        check_public_key(node, public_key)?;
        match self.peers.get(&node) {
            None => {
                self.peers.insert(node, public_key.to_vec());
                Ok(true)
            }
            Some(known) if known == public_key => Ok(false),
            Some(_) => Err(RaftError::Config {
                key: "peer_vote_key",
                value: format!("node {node}"),
                reason: "a different vote key than the one first seen for this node; it is ignored \
                         (restart this node to trust a replaced key)"
                    .into(),
            }),
        }
    }

    /// The vote key trusted for `node`, if any.
    #[must_use]
    pub fn peer_key(&self, node: NodeId) -> Option<&[u8]> {
        self.peers.get(&node).map(Vec::as_slice)
    }
}

fn check_public_key(node: NodeId, public_key: &[u8]) -> Result<(), RaftError> {
    if public_key.len() == ED25519_KEY_LEN {
        return Ok(());
    }
    Err(RaftError::Config {
        key: "peer_vote_key",
        value: format!("node {node}: {} bytes", public_key.len()),
        reason: format!("an ed25519 public key has {ED25519_KEY_LEN} bytes"),
    })
}

impl VoteSigner for Ed25519Votes {
    fn sign(&self, claim: &VoteClaim) -> Signature {
        Signature(self.key.sign(&claim.signed_bytes()).as_ref().to_vec())
    }

    fn verify(&self, signer: NodeId, claim: &VoteClaim, signature: &Signature) -> bool {
        let Some(public_key) = self.peers.get(&signer) else { return false };
        signature::UnparsedPublicKey::new(&signature::ED25519, public_key)
            .verify(&claim.signed_bytes(), &signature.0)
            .is_ok()
    }
}

/// An [`Ed25519Votes`] shared between the core (which signs and verifies) and the driver
/// (which learns peers' public keys as they connect). Cheap to clone.
#[derive(Debug, Clone)]
pub struct SharedVotes(Arc<RwLock<Ed25519Votes>>);

impl SharedVotes {
    /// Shares `votes`.
    #[must_use]
    pub fn new(votes: Ed25519Votes) -> SharedVotes {
        SharedVotes(Arc::new(RwLock::new(votes)))
    }

    /// This node's public key.
    #[must_use]
    pub fn public_key(&self) -> Vec<u8> {
        self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner).public_key()
    }

    /// Trusts `public_key` as `node`'s vote key (see [`Ed25519Votes::add_peer`]).
    pub fn add_peer(&self, node: NodeId, public_key: &[u8]) -> Result<(), RaftError> {
        self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner).add_peer(node, public_key)
    }

    /// Trusts `public_key` on first use (see [`Ed25519Votes::learn_peer`]).
    pub fn learn_peer(&self, node: NodeId, public_key: &[u8]) -> Result<bool, RaftError> {
        self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner).learn_peer(node, public_key)
    }

    /// The vote key trusted for `node`, if any.
    #[must_use]
    pub fn peer_key(&self, node: NodeId) -> Option<Vec<u8>> {
        self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner).peer_key(node).map(<[u8]>::to_vec)
    }
}

impl VoteSigner for SharedVotes {
    fn sign(&self, claim: &VoteClaim) -> Signature {
        self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner).sign(claim)
    }

    fn verify(&self, signer: NodeId, claim: &VoteClaim, signature: &Signature) -> bool {
        self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner).verify(signer, claim, signature)
    }
}

/// Votes rejected by signature checks, by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VoteRejections {
    /// No signature.
    pub unsigned: u64,
    /// A signature that does not verify under the sender's key.
    pub invalid: u64,
    /// A valid signature over another term, candidate, voter or vote kind.
    pub replayed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim() -> VoteClaim {
        VoteClaim {
            cluster: "c".into(),
            term: 3,
            candidate: NodeId(1),
            voter: NodeId(2),
            last_lsn: 10,
            last_term: 2,
            pre_vote: false,
            response: true,
            granted: true,
        }
    }

    #[test]
    fn a_signature_verifies_only_for_its_signer_and_claim() {
        let a = Ed25519Votes::from_seed(NodeId(1), &[1; 32]).unwrap();
        let mut b = Ed25519Votes::from_seed(NodeId(2), &[2; 32]).unwrap();
        b.add_peer(NodeId(1), &a.public_key()).unwrap();
        let signature = a.sign(&claim());
        assert!(b.verify(NodeId(1), &claim(), &signature));
        assert!(!b.verify(NodeId(2), &claim(), &signature), "wrong signer");
        assert!(!b.verify(NodeId(3), &claim(), &signature), "unknown signer");
        let mut other_term = claim();
        other_term.term = 4;
        assert!(!b.verify(NodeId(1), &other_term, &signature), "another term");
        let mut refused = claim();
        refused.granted = false;
        assert!(!b.verify(NodeId(1), &refused, &signature), "grant flipped");
        assert!(!b.verify(NodeId(1), &claim(), &Signature::default()), "unsigned");
    }

    #[test]
    fn bad_keys_are_refused_with_the_length() {
        assert!(matches!(
            Ed25519Votes::from_seed(NodeId(1), &[0; 31]),
            Err(RaftError::Config { key: "vote_key", .. })
        ));
        let mut a = Ed25519Votes::from_seed(NodeId(1), &[1; 32]).unwrap();
        let err = a.add_peer(NodeId(2), &[0; 33]).unwrap_err();
        assert!(err.to_string().contains("node 2: 33 bytes"), "{err}");
    }

    #[test]
    fn a_key_learned_in_band_is_never_replaced_in_band() {
        let honest = Ed25519Votes::from_seed(NodeId(2), &[2; 32]).unwrap();
        let rogue = Ed25519Votes::from_seed(NodeId(2), &[9; 32]).unwrap();
        let mut a = Ed25519Votes::from_seed(NodeId(1), &[1; 32]).unwrap();
        assert!(a.learn_peer(NodeId(2), &honest.public_key()).unwrap());
        assert!(!a.learn_peer(NodeId(2), &honest.public_key()).unwrap(), "the same key again is no change");
        let err = a.learn_peer(NodeId(2), &rogue.public_key()).unwrap_err();
        assert!(err.to_string().contains("different vote key"), "{err}");
        assert_eq!(a.peer_key(NodeId(2)), Some(honest.public_key().as_slice()));
        // The rogue key's votes do not verify; the honest one's do.
        assert!(!a.verify(NodeId(2), &claim(), &rogue.sign(&claim())));
        assert!(a.verify(NodeId(2), &claim(), &honest.sign(&claim())));
        // Only an authority (add_peer: a certificate or configuration) replaces a key.
        a.add_peer(NodeId(2), &rogue.public_key()).unwrap();
        assert!(a.verify(NodeId(2), &claim(), &rogue.sign(&claim())));
    }

    #[test]
    fn a_pkcs8_key_signs_as_its_public_key_and_other_keys_are_refused() {
        let rng = ring::rand::SystemRandom::new();
        let der = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(der.as_ref()).unwrap();
        let votes = Ed25519Votes::from_pkcs8(NodeId(1), der.as_ref()).unwrap();
        assert_eq!(votes.public_key(), pair.public_key().as_ref());
        assert!(votes.verify(NodeId(1), &claim(), &votes.sign(&claim())));
        let p256 = signature::EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .unwrap();
        let err = Ed25519Votes::from_pkcs8(NodeId(1), p256.as_ref()).unwrap_err();
        assert!(err.to_string().contains("not an Ed25519 private key"), "{err}");
    }
}
