//! The replication frame: a fixed 24-byte header and a payload, possibly compressed.
//!
//! ```text
//! offset  size  field
//!      0     4  magic "THSF"
//!      4     1  version (1)
//!      5     1  kind        (FrameKind)
//!      6     1  codec       (Codec::id)
//!      7     1  flags       (none defined in version 1; must be 0)
//!      8     4  raw_len     payload length after decompression, u32 LE
//!     12     4  wire_len    payload length on the wire, u32 LE
//!     16     4  crc         CRC32C of bytes 0..16 and the wire payload, u32 LE
//!     20     4  reserved    must be 0
//!     24     …  payload     wire_len bytes
//! ```
//!
//! Decoding checks the magic, version, kind, codec, flags and both lengths against the
//! receiver's maximum before it allocates anything, then the CRC, then decompresses and
//! checks the result has exactly `raw_len` bytes. It never panics on any input (fuzz
//! target `frame_decode`).

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{Codec, Compressor, Decompressor};
use crate::error::FrameError;

/// The frame magic.
pub const MAGIC: [u8; 4] = *b"THSF";
/// The frame format version this crate speaks.
pub const VERSION: u8 = 1;
/// Bytes of header before the payload.
pub const HEADER_LEN: usize = 24;
/// The default largest payload (before or after compression) a receiver accepts.
pub const DEFAULT_MAX_FRAME: usize = 64 << 20;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// The dialer's introduction: protocol version, cluster, node, purpose.
    Hello = 1,
    /// The acceptor's answer to a hello it accepts.
    Welcome = 2,
    /// The acceptor's answer to a hello it refuses, with a code and a reason.
    Refuse = 3,
    /// WAL records, as they are on disk.
    Entries = 4,
    /// The highest LSN the receiver holds durably.
    Ack = 5,
    /// Liveness, with the sender's last LSN.
    Heartbeat = 6,
    /// A whole sealed WAL segment file.
    Segment = 7,
    /// An opaque message of the layer above (Raft messages).
    Message = 8,
}

impl FrameKind {
    /// The kind for a wire byte.
    pub fn from_u8(byte: u8) -> Result<FrameKind, FrameError> {
        Ok(match byte {
            1 => FrameKind::Hello,
            2 => FrameKind::Welcome,
            3 => FrameKind::Refuse,
            4 => FrameKind::Entries,
            5 => FrameKind::Ack,
            6 => FrameKind::Heartbeat,
            7 => FrameKind::Segment,
            8 => FrameKind::Message,
            other => return Err(FrameError::UnknownKind(other)),
        })
    }
}

/// A decoded header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// What the frame carries.
    pub kind: FrameKind,
    /// How the payload is compressed.
    pub codec: Codec,
    /// Payload bytes after decompression.
    pub raw_len: usize,
    /// Payload bytes on the wire.
    pub wire_len: usize,
    /// The stored CRC32C.
    pub crc: u32,
}

impl FrameHeader {
    /// Decodes and checks a header. Lengths above `max_frame` are refused here, before the
    /// caller reads or allocates the payload.
    pub fn decode(header: &[u8], max_frame: usize) -> Result<FrameHeader, FrameError> {
        let Some(header) = header.get(..HEADER_LEN) else {
            return Err(FrameError::Truncated { needed: HEADER_LEN, available: header.len() });
        };
        if header[..4] != MAGIC {
            return Err(FrameError::BadMagic([header[0], header[1], header[2], header[3]]));
        }
        if header[4] != VERSION {
            return Err(FrameError::UnsupportedVersion(header[4]));
        }
        let kind = FrameKind::from_u8(header[5])?;
        let codec = Codec::from_id(header[6])?;
        if header[7] != 0 {
            return Err(FrameError::UnknownFlags(header[7]));
        }
        if header[20..24] != [0; 4] {
            return Err(FrameError::Reserved);
        }
        let raw_len = u32_at(header, 8) as usize;
        let wire_len = u32_at(header, 12) as usize;
        for len in [raw_len, wire_len] {
            if len > max_frame {
                return Err(FrameError::TooLarge { len, max: max_frame });
            }
        }
        if codec == Codec::None && raw_len != wire_len {
            return Err(FrameError::LengthMismatch { declared: raw_len, actual: wire_len });
        }
        Ok(FrameHeader { kind, codec, raw_len, wire_len, crc: u32_at(header, 16) })
    }

    /// Header plus payload bytes on the wire.
    #[must_use]
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.wire_len
    }
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What it carries.
    pub kind: FrameKind,
    /// The codec it came with.
    pub codec: Codec,
    /// The payload after decompression.
    pub payload: Bytes,
    /// Bytes it took on the wire, header included.
    pub wire_len: usize,
}

/// Encodes a frame whose payload is sent as is.
#[must_use]
pub fn encode_plain(kind: FrameKind, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER_LEN + payload.len());
    put_header(&mut out, kind, Codec::None, payload.len(), payload);
    out.put_slice(payload);
    out.freeze()
}

/// Compresses `payload` with `compressor` and encodes the frame. `scratch` is reused
/// between calls to keep the hot path free of allocations but the frame's own.
pub fn encode(kind: FrameKind, payload: &[u8], compressor: &mut Compressor, scratch: &mut Vec<u8>) -> Bytes {
    let codec = compressor.compress(payload, scratch);
    let mut out = BytesMut::with_capacity(HEADER_LEN + scratch.len());
    put_header(&mut out, kind, codec, payload.len(), scratch);
    out.put_slice(scratch);
    out.freeze()
}

fn put_header(out: &mut BytesMut, kind: FrameKind, codec: Codec, raw_len: usize, wire: &[u8]) {
    assert!(
        u32::try_from(raw_len).is_ok() && u32::try_from(wire.len()).is_ok(),
        "frame payloads are bounded far below 4 GiB by the senders"
    );
    let start = out.len();
    out.put_slice(&MAGIC);
    out.put_slice(&[VERSION, kind as u8, codec.id(), 0]);
    out.put_u32_le(raw_len as u32);
    out.put_u32_le(wire.len() as u32);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out[start..start + 16]), wire);
    out.put_u32_le(crc);
    out.put_u32_le(0);
}

/// Checks a payload's CRC against its header.
pub fn check_crc(header_bytes: &[u8], header: &FrameHeader, wire: &[u8]) -> Result<(), FrameError> {
    let computed = crc32c::crc32c_append(crc32c::crc32c(&header_bytes[..16]), wire);
    if computed == header.crc { Ok(()) } else { Err(FrameError::Checksum { stored: header.crc, computed }) }
}

/// Decodes one frame from the front of `buf`. `Ok(None)` means more bytes are needed.
/// Returns the frame and the bytes it took.
pub fn decode(
    buf: &Bytes,
    max_frame: usize,
    decompressor: &mut Decompressor,
) -> Result<Option<(Frame, usize)>, FrameError> {
    if buf.len() < HEADER_LEN {
        // An early look at the magic tells a wrong protocol before a whole header arrives.
        let n = buf.len().min(4);
        if buf[..n] != MAGIC[..n] {
            let mut magic = [0; 4];
            magic[..n].copy_from_slice(&buf[..n]);
            return Err(FrameError::BadMagic(magic));
        }
        return Ok(None);
    }
    let header = FrameHeader::decode(buf, max_frame)?;
    let len = header.frame_len();
    if buf.len() < len {
        return Ok(None);
    }
    let frame = finish(buf, &header, buf.slice(HEADER_LEN..len), decompressor)?;
    Ok(Some((frame, len)))
}

/// Completes a frame whose header (`header_bytes`, decoded as `header`) and wire payload
/// are in hand: checks the CRC, then decompresses to exactly `raw_len` bytes.
pub fn finish(
    header_bytes: &[u8],
    header: &FrameHeader,
    wire: Bytes,
    decompressor: &mut Decompressor,
) -> Result<Frame, FrameError> {
    check_crc(header_bytes, header, &wire)?;
    let payload = if header.codec == Codec::None {
        wire
    } else {
        let mut out = Vec::new();
        decompressor.decompress(header.codec, &wire, header.raw_len, &mut out)?;
        Bytes::from(out)
    };
    Ok(Frame { kind: header.kind, codec: header.codec, payload, wire_len: header.frame_len() })
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("callers pass a whole header"))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(feature = "lz4", feature = "zstd", feature = "snappy"))]
    use crate::codec::CodecChoice;

    #[cfg(all(feature = "lz4", feature = "zstd", feature = "snappy"))]
    fn sample() -> Vec<u8> {
        (0..5000u32).flat_map(|i| format!("{{\"k\":{i},\"v\":\"value-{}\"}}", i % 17).into_bytes()).collect()
    }

    #[cfg(all(feature = "lz4", feature = "zstd", feature = "snappy"))]
    fn roundtrip(codec: Codec) {
        let payload = sample();
        let mut c = Compressor::new(CodecChoice::Fixed(codec)).unwrap();
        let bytes = encode(FrameKind::Entries, &payload, &mut c, &mut Vec::new());
        let (frame, used) = decode(&bytes, DEFAULT_MAX_FRAME, &mut Decompressor::new()).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!((frame.kind, frame.codec.id()), (FrameKind::Entries, codec.id()));
        assert_eq!(&frame.payload[..], &payload[..]);
    }

    #[cfg(all(feature = "lz4", feature = "zstd", feature = "snappy"))]
    #[test]
    fn frames_round_trip_with_every_codec() {
        for codec in [Codec::None, Codec::Lz4, Codec::Zstd { level: 3 }, Codec::Snappy] {
            roundtrip(codec);
        }
    }

    #[test]
    fn partial_frames_ask_for_more() {
        let bytes = encode_plain(FrameKind::Ack, &7u64.to_le_bytes());
        let mut d = Decompressor::new();
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes.slice(..cut), DEFAULT_MAX_FRAME, &mut d).unwrap(), None, "cut {cut}");
        }
    }

    #[cfg(all(feature = "lz4", feature = "zstd", feature = "snappy"))]
    #[test]
    fn every_flipped_bit_is_detected() {
        let payload = sample();
        let mut c = Compressor::new(CodecChoice::Fixed(Codec::Lz4)).unwrap();
        let bytes = encode(FrameKind::Entries, &payload[..2000], &mut c, &mut Vec::new());
        let mut d = Decompressor::new();
        for bit in 0..bytes.len() * 8 {
            let mut bad = bytes.to_vec();
            bad[bit / 8] ^= 1 << (bit % 8);
            match decode(&Bytes::from(bad), DEFAULT_MAX_FRAME, &mut d) {
                // A flipped length bit may make the frame look longer than the buffer.
                Ok(None) => assert!((8..16).contains(&(bit / 8)), "bit {bit}"),
                Ok(Some(_)) => panic!("bit {bit} went unnoticed"),
                Err(_) => {}
            }
        }
    }

    #[test]
    fn bad_headers_are_typed_errors() {
        let good = encode_plain(FrameKind::Heartbeat, b"12345678");
        let mut d = Decompressor::new();
        let with = |at: usize, byte: u8| {
            let mut b = good.to_vec();
            b[at] = byte;
            Bytes::from(b)
        };
        let err = |b: Bytes, d: &mut Decompressor| decode(&b, 1024, d).unwrap_err();
        assert_eq!(err(with(0, b'X'), &mut d), FrameError::BadMagic(*b"XHSF"));
        assert_eq!(err(with(4, 2), &mut d), FrameError::UnsupportedVersion(2));
        assert_eq!(err(with(5, 99), &mut d), FrameError::UnknownKind(99));
        assert_eq!(err(with(6, 9), &mut d), FrameError::UnknownCodec(9));
        assert_eq!(err(with(7, 1), &mut d), FrameError::UnknownFlags(1));
        assert_eq!(err(with(21, 1), &mut d), FrameError::Reserved);
        let huge = {
            let mut b = good.to_vec();
            b[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
            Bytes::from(b)
        };
        assert_eq!(err(huge, &mut d), FrameError::TooLarge { len: u32::MAX as usize, max: 1024 });
        // TLS handshake bytes where a frame should be: refused at the first byte.
        assert_eq!(
            decode(&Bytes::from_static(&[0x16, 0x03]), 1024, &mut d).unwrap_err(),
            FrameError::BadMagic([0x16, 0x03, 0, 0])
        );
    }
}
