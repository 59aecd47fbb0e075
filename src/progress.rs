//! How the library reports progress without printing: the CLI plugs in a progress bar on a
//! terminal and nothing otherwise.

pub trait Progress: Send + Sync {
    /// A new phase begins; `total` bytes when known.
    fn begin(&self, phase: &str, total: Option<u64>);
    fn advance(&self, bytes: u64);
    fn end(&self);
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {
    fn begin(&self, _: &str, _: Option<u64>) {}
    fn advance(&self, _: u64) {}
    fn end(&self) {}
}
