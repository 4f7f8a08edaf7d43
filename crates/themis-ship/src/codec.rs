//! Compression codecs and the automatic codec choice.
//!
//! Each codec is a cargo feature of its own (`lz4`, `zstd`, `snappy`; all on by default),
//! so a build pays only for the codecs it uses. [`Codec`] always names all of them (they
//! are the wire's codec bytes); a codec left out of the build is refused by
//! [`Codec::validate`] (so a config cannot choose it) and a frame compressed with one is
//! refused with [`FrameError::CodecNotBuilt`].
//!
//! A [`Compressor`] turns a batch of bytes into a frame payload with the configured
//! [`CodecChoice`]. [`CodecChoice::Auto`] sends small batches uncompressed and otherwise
//! samples every candidate now and then, keeping the one with the best effective
//! throughput for the configured link bandwidth: compression time plus the time to send
//! what it produced. Incompressible data ends up sent as is, because then compressing only
//! adds time.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use crate::error::FrameError;

/// The smallest and largest zstd level accepted.
pub const ZSTD_LEVELS: std::ops::RangeInclusive<i32> = 1..=19;

/// How a frame's payload is compressed. The wire carries [`Codec::id`]; the zstd level
/// matters only to the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// Sent as is.
    None,
    /// LZ4 block format (`lz4_flex`).
    Lz4,
    /// Zstandard at a level from 1 to 19.
    Zstd {
        /// The compression level.
        level: i32,
    },
    /// Snappy raw format (`snap`).
    Snappy,
}

impl Codec {
    /// The codec's byte on the wire.
    #[must_use]
    pub const fn id(self) -> u8 {
        match self {
            Codec::None => 0,
            Codec::Lz4 => 1,
            Codec::Zstd { .. } => 2,
            Codec::Snappy => 3,
        }
    }

    /// The codec for a wire byte (the zstd level is not on the wire; decoding ignores it).
    pub fn from_id(id: u8) -> Result<Codec, FrameError> {
        match id {
            0 => Ok(Codec::None),
            1 => Ok(Codec::Lz4),
            2 => Ok(Codec::Zstd { level: 1 }),
            3 => Ok(Codec::Snappy),
            other => Err(FrameError::UnknownCodec(other)),
        }
    }

    /// The cargo feature of themis-ship that builds this codec (None: always built).
    #[must_use]
    pub const fn feature(self) -> Option<&'static str> {
        match self {
            Codec::None => None,
            Codec::Lz4 => Some("lz4"),
            Codec::Zstd { .. } => Some("zstd"),
            Codec::Snappy => Some("snappy"),
        }
    }

    /// Whether this build holds the codec.
    #[must_use]
    pub const fn is_built(self) -> bool {
        match self {
            Codec::None => true,
            Codec::Lz4 => cfg!(feature = "lz4"),
            Codec::Zstd { .. } => cfg!(feature = "zstd"),
            Codec::Snappy => cfg!(feature = "snappy"),
        }
    }

    /// Checks that this build holds the codec, and the zstd level.
    pub fn validate(self) -> Result<(), String> {
        if let (false, Some(feature)) = (self.is_built(), self.feature()) {
            return Err(format!(
                "codec {self} is left out of this build (enable the cargo feature `{feature}` of themis-ship)"
            ));
        }
        match self {
            Codec::Zstd { level } if !ZSTD_LEVELS.contains(&level) => {
                Err(format!("zstd level {level} is outside {}..={}", ZSTD_LEVELS.start(), ZSTD_LEVELS.end()))
            }
            _ => Ok(()),
        }
    }

    /// Parses `none`, `lz4`, `snappy`, `zstd` (level 3) or `zstd:N`.
    pub fn parse(text: &str) -> Result<Codec, String> {
        let codec = match text {
            "none" => Codec::None,
            "lz4" => Codec::Lz4,
            "snappy" => Codec::Snappy,
            "zstd" => Codec::Zstd { level: 3 },
            other => match other.strip_prefix("zstd:").map(str::parse) {
                Some(Ok(level)) => Codec::Zstd { level },
                _ => {
                    return Err(format!(
                        "unknown codec {other:?} (expected none, lz4, snappy, zstd or zstd:LEVEL)"
                    ));
                }
            },
        };
        codec.validate()?;
        Ok(codec)
    }

    fn slot(self) -> usize {
        usize::from(self.id())
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Codec::None => f.write_str("none"),
            Codec::Lz4 => f.write_str("lz4"),
            Codec::Zstd { level } => write!(f, "zstd:{level}"),
            Codec::Snappy => f.write_str("snappy"),
        }
    }
}

/// The settings of [`CodecChoice::Auto`].
#[derive(Debug, Clone, PartialEq)]
pub struct AutoConfig {
    /// Batches smaller than this go uncompressed (default 1 KiB).
    pub min_batch_bytes: usize,
    /// The link's bandwidth in bytes per second, which prices a byte on the wire against
    /// a nanosecond of compression (default 125 MB/s, a 1 Gbit/s link).
    pub link_bytes_per_sec: u64,
    /// The codecs tried when sampling (default LZ4, Zstd 1 and Snappy, those the build
    /// holds).
    pub candidates: Vec<Codec>,
    /// Sample again after this many compressed batches (default 64).
    pub resample_every: u32,
}

impl Default for AutoConfig {
    fn default() -> Self {
        AutoConfig {
            min_batch_bytes: 1024,
            link_bytes_per_sec: 125_000_000,
            candidates: [Codec::Lz4, Codec::Zstd { level: 1 }, Codec::Snappy]
                .into_iter()
                .filter(|c| c.is_built())
                .collect(),
            resample_every: 64,
        }
    }
}

/// Which codec a stream uses.
#[derive(Debug, Clone, PartialEq)]
pub enum CodecChoice {
    /// Always this codec.
    Fixed(Codec),
    /// Pick per batch by measured effective throughput.
    Auto(AutoConfig),
}

impl Default for CodecChoice {
    /// LZ4, or no compression in a build without it.
    fn default() -> Self {
        CodecChoice::Fixed(if Codec::Lz4.is_built() { Codec::Lz4 } else { Codec::None })
    }
}

impl CodecChoice {
    /// Checks levels and the auto settings; the message names the bad value.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            CodecChoice::Fixed(codec) => codec.validate(),
            CodecChoice::Auto(auto) => {
                if auto.link_bytes_per_sec == 0 {
                    return Err("auto codec: link_bytes_per_sec must be above 0".into());
                }
                if auto.resample_every == 0 {
                    return Err("auto codec: resample_every must be above 0".into());
                }
                if auto.candidates.is_empty() {
                    return Err("auto codec: candidates must name at least one codec".into());
                }
                auto.candidates.iter().try_for_each(|c| c.validate())
            }
        }
    }
}

/// What a [`Compressor`] has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CodecStats {
    /// Batches compressed.
    pub batches: u64,
    /// Bytes given to the compressor.
    pub bytes_in: u64,
    /// Bytes it produced (frame payloads).
    pub bytes_out: u64,
    /// Time spent compressing, including sampling, in nanoseconds.
    pub nanos: u64,
    /// Batches sent with each codec, indexed by [`Codec::id`].
    pub by_codec: [u64; 4],
    /// Times the automatic choice sampled every candidate.
    pub samples: u64,
    /// The codec used last.
    pub last: Option<Codec>,
}

impl CodecStats {
    /// Adds what one compressor did between two snapshots of its statistics (several
    /// compressors working for one cache report as one).
    pub fn add_since(&mut self, before: &CodecStats, after: &CodecStats) {
        self.batches += after.batches - before.batches;
        self.bytes_in += after.bytes_in - before.bytes_in;
        self.bytes_out += after.bytes_out - before.bytes_out;
        self.nanos += after.nanos - before.nanos;
        for (total, (a, b)) in self.by_codec.iter_mut().zip(after.by_codec.iter().zip(&before.by_codec)) {
            *total += a - b;
        }
        self.samples += after.samples - before.samples;
        if after.batches > before.batches {
            self.last = after.last;
        }
    }

    /// `bytes_out / bytes_in` (1.0 before any batch): below 1 means smaller on the wire.
    #[must_use]
    pub fn ratio(&self) -> f64 {
        if self.bytes_in == 0 { 1.0 } else { self.bytes_out as f64 / self.bytes_in as f64 }
    }
}

/// A source of nanoseconds for timing compression, injected so tests are deterministic.
pub type NanoClock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The default [`NanoClock`]: a monotonic reading from process start.
#[must_use]
pub fn monotonic_nanos() -> NanoClock {
    let start = Instant::now();
    Arc::new(move || u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX))
}

/// Compresses batches for one stream. Keeps reusable codec contexts, the automatic
/// choice's state and [`CodecStats`].
pub struct Compressor {
    choice: CodecChoice,
    clock: NanoClock,
    #[cfg(feature = "zstd")]
    zstd: Option<(i32, zstd::bulk::Compressor<'static>)>,
    #[cfg(feature = "snappy")]
    snappy: snap::raw::Encoder,
    /// The automatic choice in force and the batches left before the next sample.
    chosen: Option<Codec>,
    until_sample: u32,
    stats: CodecStats,
}

impl fmt::Debug for Compressor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Compressor")
            .field("choice", &self.choice)
            .field("chosen", &self.chosen)
            .finish_non_exhaustive()
    }
}

impl Compressor {
    /// A compressor for `choice`, timing itself with the monotonic clock.
    pub fn new(choice: CodecChoice) -> Result<Compressor, String> {
        Compressor::with_clock(choice, monotonic_nanos())
    }

    /// A compressor that reads time from `clock`.
    pub fn with_clock(choice: CodecChoice, clock: NanoClock) -> Result<Compressor, String> {
        choice.validate()?;
        Ok(Compressor {
            choice,
            clock,
            #[cfg(feature = "zstd")]
            zstd: None,
            #[cfg(feature = "snappy")]
            snappy: snap::raw::Encoder::new(),
            chosen: None,
            until_sample: 0,
            stats: CodecStats::default(),
        })
    }

    /// What this compressor has done so far.
    #[must_use]
    pub fn stats(&self) -> CodecStats {
        self.stats
    }

    /// Compresses `input` into `out` (cleared first) and returns the codec used. `out` is
    /// `input` itself for [`Codec::None`].
    pub fn compress(&mut self, input: &[u8], out: &mut Vec<u8>) -> Codec {
        let start = (self.clock)();
        let codec = match &self.choice {
            CodecChoice::Fixed(codec) => {
                let codec = *codec;
                self.compress_with(codec, input, out)
            }
            CodecChoice::Auto(auto) if input.len() < auto.min_batch_bytes => {
                self.compress_with(Codec::None, input, out)
            }
            CodecChoice::Auto(_) => self.compress_auto(input, out),
        };
        let stats = &mut self.stats;
        stats.batches += 1;
        stats.bytes_in += input.len() as u64;
        stats.bytes_out += out.len() as u64;
        stats.nanos += (self.clock)().saturating_sub(start);
        stats.by_codec[codec.slot()] += 1;
        stats.last = Some(codec);
        codec
    }

    fn compress_auto(&mut self, input: &[u8], out: &mut Vec<u8>) -> Codec {
        let CodecChoice::Auto(auto) = &self.choice else { unreachable!("compress_auto without Auto") };
        if let Some(codec) = self.chosen.filter(|_| self.until_sample > 0) {
            self.until_sample -= 1;
            return self.compress_with(codec, input, out);
        }
        // Sample: price sending as is, then every candidate, and keep the cheapest output.
        let candidates = auto.candidates.clone();
        let ns_per_byte_on_link = 1e9 / auto.link_bytes_per_sec as f64;
        let price = |nanos: u64, bytes: usize| nanos as f64 + bytes as f64 * ns_per_byte_on_link;
        let mut best = (Codec::None, price(0, input.len()));
        let mut scratch = Vec::new();
        for codec in candidates {
            let start = (self.clock)();
            let codec = self.compress_with(codec, input, &mut scratch);
            let cost = price((self.clock)().saturating_sub(start), scratch.len());
            if cost < best.1 {
                best = (codec, cost);
                std::mem::swap(out, &mut scratch);
            }
        }
        if best.0 == Codec::None {
            out.clear();
            out.extend_from_slice(input);
        }
        let CodecChoice::Auto(auto) = &self.choice else { unreachable!() };
        self.chosen = Some(best.0);
        self.until_sample = auto.resample_every;
        self.stats.samples += 1;
        best.0
    }

    /// Compresses with `codec`. A codec the build leaves out never gets here (validation
    /// refuses it); were it to, the input would go as is, under [`Codec::None`].
    #[cfg_attr(not(any(feature = "zstd", feature = "snappy")), allow(clippy::unused_self))]
    fn compress_with(&mut self, codec: Codec, input: &[u8], out: &mut Vec<u8>) -> Codec {
        out.clear();
        match codec {
            #[cfg(feature = "lz4")]
            Codec::Lz4 => {
                out.resize(lz4_flex::block::get_maximum_output_size(input.len()), 0);
                let n = lz4_flex::block::compress_into(input, out)
                    .expect("the buffer has the maximum output size");
                out.truncate(n);
                codec
            }
            #[cfg(feature = "zstd")]
            Codec::Zstd { level } => {
                if self.zstd.as_ref().is_none_or(|(l, _)| *l != level) {
                    let ctx =
                        zstd::bulk::Compressor::new(level).expect("levels are validated at construction");
                    self.zstd = Some((level, ctx));
                }
                let (_, ctx) = self.zstd.as_mut().expect("set above");
                out.reserve(zstd::zstd_safe::compress_bound(input.len()));
                ctx.compress_to_buffer(input, out).expect("the buffer has the compress bound");
                codec
            }
            #[cfg(feature = "snappy")]
            Codec::Snappy => {
                out.resize(snap::raw::max_compress_len(input.len()), 0);
                let n = self.snappy.compress(input, out).expect("the buffer has the maximum output size");
                out.truncate(n);
                codec
            }
            _ => {
                out.extend_from_slice(input);
                Codec::None
            }
        }
    }
}

/// Decompresses frame payloads, reusing contexts between frames.
pub struct Decompressor {
    #[cfg(feature = "zstd")]
    zstd: zstd::bulk::Decompressor<'static>,
    #[cfg(feature = "snappy")]
    snappy: snap::raw::Decoder,
}

impl fmt::Debug for Decompressor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decompressor").finish_non_exhaustive()
    }
}

impl Default for Decompressor {
    fn default() -> Self {
        Decompressor::new()
    }
}

impl Decompressor {
    /// A decompressor.
    #[must_use]
    pub fn new() -> Decompressor {
        Decompressor {
            #[cfg(feature = "zstd")]
            zstd: zstd::bulk::Decompressor::new().expect("a zstd context can be created"),
            #[cfg(feature = "snappy")]
            snappy: snap::raw::Decoder::new(),
        }
    }

    /// Decompresses `input` into `out` (cleared first), which must come to exactly
    /// `raw_len` bytes. `raw_len` was bounded by the caller before this allocates it.
    pub fn decompress(
        &mut self,
        codec: Codec,
        input: &[u8],
        raw_len: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), FrameError> {
        out.clear();
        #[cfg_attr(not(any(feature = "lz4", feature = "zstd", feature = "snappy")), allow(unused_variables))]
        let bad = |reason: String| FrameError::Decompress { codec, reason };
        let n = match codec {
            Codec::None => {
                out.extend_from_slice(input);
                input.len()
            }
            #[cfg(feature = "lz4")]
            Codec::Lz4 => {
                out.resize(raw_len, 0);
                lz4_flex::block::decompress_into(input, out).map_err(|e| bad(e.to_string()))?
            }
            #[cfg(feature = "zstd")]
            Codec::Zstd { .. } => {
                out.reserve(raw_len);
                let n = self.zstd.decompress_to_buffer(input, out).map_err(|e| bad(e.to_string()))?;
                // zstd stops at the buffer's capacity, which may exceed `raw_len`.
                if n > raw_len {
                    return Err(bad(format!("decompressed to more than the {raw_len} bytes declared")));
                }
                n
            }
            #[cfg(feature = "snappy")]
            Codec::Snappy => {
                let declared = snap::raw::decompress_len(input).map_err(|e| bad(e.to_string()))?;
                if declared != raw_len {
                    return Err(bad(format!("snappy block declares {declared} bytes, the frame {raw_len}")));
                }
                out.resize(raw_len, 0);
                self.snappy.decompress(input, out).map_err(|e| bad(e.to_string()))?
            }
            #[allow(unreachable_patterns, reason = "reached only when a codec's feature is off")]
            _ => {
                let feature = codec.feature().unwrap_or("none");
                return Err(FrameError::CodecNotBuilt { codec, feature });
            }
        };
        if n != raw_len {
            return Err(FrameError::LengthMismatch { declared: raw_len, actual: n });
        }
        out.truncate(n);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[cfg(all(feature = "lz4", feature = "zstd", feature = "snappy"))]
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    /// Every build: a codec it holds round-trips; one it leaves out is refused, naming its
    /// cargo feature, where it is configured and where a frame names it. The default
    /// choice and the automatic candidates use built codecs only.
    #[test]
    fn a_codec_left_out_of_the_build_is_refused_by_name() {
        let input = json_like(8192);
        for codec in [Codec::Lz4, Codec::Zstd { level: 3 }, Codec::Snappy] {
            let feature = codec.feature().expect("a compressing codec has a feature");
            let mut wire = Vec::new();
            let mut back = Vec::new();
            if codec.is_built() {
                let used = Compressor::new(CodecChoice::Fixed(codec)).unwrap().compress(&input, &mut wire);
                assert_eq!(used, codec);
                Decompressor::new().decompress(codec, &wire, input.len(), &mut back).unwrap();
                assert_eq!(back, input);
                continue;
            }
            let err = Codec::parse(&codec.to_string()).unwrap_err();
            assert!(err.contains(&format!("`{feature}`")), "{err}");
            assert!(Compressor::new(CodecChoice::Fixed(codec)).is_err());
            let err = Decompressor::new().decompress(codec, b"abc", 3, &mut back).unwrap_err();
            assert_eq!(err, FrameError::CodecNotBuilt { codec, feature });
            assert!(err.to_string().contains(feature), "{err}");
        }
        assert!(AutoConfig::default().candidates.iter().all(|c| c.is_built()));
        let CodecChoice::Fixed(default) = CodecChoice::default() else { panic!("the default is fixed") };
        assert!(default.is_built());
        let mut wire = Vec::new();
        let used = Compressor::new(CodecChoice::default()).unwrap().compress(&input, &mut wire);
        let mut back = Vec::new();
        Decompressor::new().decompress(used, &wire, input.len(), &mut back).unwrap();
        assert_eq!(back, input);
    }

    fn json_like(n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0u64;
        while out.len() < n {
            out.extend_from_slice(format!("{{\"id\":{i},\"name\":\"user-{i}\",\"active\":true}}").as_bytes());
            i += 1;
        }
        out.truncate(n);
        out
    }

    #[cfg(all(feature = "lz4", feature = "zstd", feature = "snappy"))]
    fn noise(n: usize) -> Vec<u8> {
        let mut rng = fastrand::Rng::with_seed(7);
        (0..n).map(|_| rng.u8(..)).collect()
    }

    #[cfg(all(feature = "lz4", feature = "zstd", feature = "snappy"))]
    #[test]
    fn every_codec_round_trips() {
        let input = json_like(64 * 1024);
        for codec in
            [Codec::None, Codec::Lz4, Codec::Zstd { level: 1 }, Codec::Zstd { level: 19 }, Codec::Snappy]
        {
            let mut c = Compressor::new(CodecChoice::Fixed(codec)).unwrap();
            let mut wire = Vec::new();
            assert_eq!(c.compress(&input, &mut wire), codec);
            if codec != Codec::None {
                assert!(wire.len() < input.len() / 2, "{codec} left {} of {} bytes", wire.len(), input.len());
            }
            let mut back = Vec::new();
            Decompressor::new().decompress(codec, &wire, input.len(), &mut back).unwrap();
            assert_eq!(back, input, "{codec}");
        }
    }

    #[cfg(all(feature = "lz4", feature = "zstd", feature = "snappy"))]
    #[test]
    fn a_wrong_declared_length_is_an_error() {
        let input = json_like(4096);
        for codec in [Codec::None, Codec::Lz4, Codec::Zstd { level: 3 }, Codec::Snappy] {
            let mut wire = Vec::new();
            Compressor::new(CodecChoice::Fixed(codec)).unwrap().compress(&input, &mut wire);
            let mut out = Vec::new();
            let err = Decompressor::new().decompress(codec, &wire, input.len() - 1, &mut out).unwrap_err();
            assert!(
                matches!(err, FrameError::LengthMismatch { .. } | FrameError::Decompress { .. }),
                "{codec}: {err}"
            );
        }
    }

    #[cfg(all(feature = "lz4", feature = "zstd", feature = "snappy"))]
    #[test]
    fn levels_and_names_are_validated() {
        assert!(Codec::Zstd { level: 0 }.validate().unwrap_err().contains("zstd level 0"));
        assert!(Codec::Zstd { level: 20 }.validate().is_err());
        assert_eq!(Codec::parse("zstd:7"), Ok(Codec::Zstd { level: 7 }));
        assert!(Codec::parse("gzip").unwrap_err().contains("\"gzip\""));
        assert!(Codec::parse("zstd:22").unwrap_err().contains("22"));
        assert!(
            Compressor::new(CodecChoice::Auto(AutoConfig { link_bytes_per_sec: 0, ..AutoConfig::default() }))
                .is_err()
        );
        assert_eq!(Codec::from_id(9).unwrap_err(), FrameError::UnknownCodec(9));
    }

    /// A clock that advances by `step` on every reading, so compression "costs" the same
    /// for every codec and the choice turns on output size alone.
    #[cfg(all(feature = "lz4", feature = "zstd", feature = "snappy"))]
    fn stepping(step: u64) -> NanoClock {
        let now = Arc::new(AtomicU64::new(0));
        Arc::new(move || now.fetch_add(step, Ordering::Relaxed))
    }

    #[cfg(all(feature = "lz4", feature = "zstd", feature = "snappy"))]
    #[test]
    fn auto_sends_small_batches_as_is() {
        let mut c = Compressor::with_clock(CodecChoice::Auto(AutoConfig::default()), stepping(1)).unwrap();
        let mut out = Vec::new();
        assert_eq!(c.compress(&json_like(1023), &mut out), Codec::None);
        assert_eq!(out.len(), 1023);
        assert_eq!(c.stats().samples, 0);
    }

    #[cfg(all(feature = "lz4", feature = "zstd", feature = "snappy"))]
    #[test]
    fn auto_compresses_text_and_not_noise() {
        let auto = AutoConfig { resample_every: 2, ..AutoConfig::default() };
        let mut c = Compressor::with_clock(CodecChoice::Auto(auto), stepping(1_000)).unwrap();
        let mut out = Vec::new();
        let text = json_like(256 * 1024);
        let first = c.compress(&text, &mut out);
        assert_ne!(first, Codec::None);
        let mut back = Vec::new();
        Decompressor::new().decompress(first, &out, text.len(), &mut back).unwrap();
        assert_eq!(back, text);
        // Kept for `resample_every` batches, then sampled again: noise goes out as is.
        assert_eq!(c.compress(&noise(64 * 1024), &mut out), first);
        assert_eq!(c.compress(&noise(64 * 1024), &mut out), first);
        assert_eq!(c.compress(&noise(64 * 1024), &mut out), Codec::None);
        assert_eq!(out.len(), 64 * 1024);
        let stats = c.stats();
        assert_eq!((stats.samples, stats.batches), (2, 4));
        assert_eq!(stats.by_codec[0], 1);
    }

    #[cfg(all(feature = "lz4", feature = "zstd", feature = "snappy"))]
    #[test]
    fn auto_prefers_not_compressing_on_a_fast_link_when_compression_is_slow() {
        // Every codec "takes" 1 ms for 64 KiB, while the link moves 64 KiB in 6.5 µs.
        let auto = AutoConfig { link_bytes_per_sec: 10_000_000_000, ..AutoConfig::default() };
        let mut c = Compressor::with_clock(CodecChoice::Auto(auto), stepping(1_000_000)).unwrap();
        let mut out = Vec::new();
        assert_eq!(c.compress(&json_like(64 * 1024), &mut out), Codec::None);
    }
}
