//! zstd: one standard frame, readable by the `zstd` CLI.

use std::io::{self, BufRead, Write};

/// Level 1: on Kubernetes-shaped data it stores 2.3 % more than level 3 for 13 % less CPU and
/// 9 % less wall per backup (level 2 = level 1 here; `scripts/bench-compression`,
/// docs/performance.md).
pub const DEFAULT_LEVEL: i32 = 1;

/// Validates a level the way the config promises (1..=19; 20+ need --ultra and far more memory).
pub fn valid_level(level: i32) -> bool {
    (1..=19).contains(&level)
}

/// A streaming zstd compressor writing into `inner`.
///
/// # Errors
/// zstd cannot allocate its context.
pub fn compressor<W: Write>(inner: W, level: i32) -> io::Result<zstd::Encoder<'static, W>> {
    let mut encoder = zstd::Encoder::new(inner, level)?;
    // A checksum in the frame lets `zstd -t` and our reader catch corruption on their own.
    encoder.include_checksum(true)?;
    // One worker thread compresses while the caller keeps receiving and hashing: compression
    // is the slowest stage, and this overlaps it with the rest of the pipeline. The output is
    // still one standard frame.
    encoder.multithread(1)?;
    // zstd's default job for level 3 is 8 MiB, buffered twice: 1 MiB jobs keep the overlap and
    // cut ~30 MiB of peak memory (measured, docs/performance.md).
    encoder.set_parameter(zstd::stream::raw::CParameter::JobSize(1 << 20))?;
    Ok(encoder)
}

/// A streaming zstd decompressor reading from `inner`.
///
/// # Errors
/// zstd cannot allocate its context.
pub fn decompressor<R: BufRead>(inner: R) -> io::Result<zstd::Decoder<'static, R>> {
    zstd::Decoder::with_buffer(inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn round_trip() {
        let data = b"kube-system/configmaps ".repeat(5000);
        let mut c = compressor(Vec::new(), DEFAULT_LEVEL).unwrap();
        c.write_all(&data).unwrap();
        let packed = c.finish().unwrap();
        assert!(packed.len() < data.len() / 10);
        let mut d = decompressor(&packed[..]).unwrap();
        let mut out = Vec::new();
        d.read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn levels_outside_one_to_nineteen_are_refused() {
        assert!(valid_level(1) && valid_level(19));
        assert!(!valid_level(0) && !valid_level(20) && !valid_level(-1));
    }
}
