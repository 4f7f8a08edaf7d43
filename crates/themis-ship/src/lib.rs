//! Everything that moves WAL bytes between nodes and applies them on arrival.
//!
//! TODO(doc): replaced below once the transport exists.

pub mod apply;
pub mod codec;
pub mod error;
pub mod frame;
pub mod ship;
pub mod tls;
pub mod transport;

pub use apply::{
    Applier, ApplyError, ApplyStats, ApplyTask, Change, DumpRow, MemoryStateMachine, ParallelApplier,
    ParallelConfig, SerialApplier, StateMachine,
};
pub use codec::{AutoConfig, Codec, CodecChoice, CodecStats, Compressor, Decompressor};
pub use error::{FrameError, RefuseCode, ShipError};
pub use frame::{Frame, FrameHeader, FrameKind};
