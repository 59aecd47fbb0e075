//! The pipeline stages between the etcd source and the store: hash, compress, encrypt (and
//! their inverses for reading back). Each is a `std::io::Write`/`Read` adapter, so a chain of
//! them runs on one blocking thread and a bounded channel joins it to the async side
//! (`pipe`); back-pressure comes for free.

pub mod compress;
pub mod encrypt;
pub mod hash;
pub mod pipe;
