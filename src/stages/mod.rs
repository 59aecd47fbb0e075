//! The pipeline stages between the etcd source and the store: hash, compress, encrypt (and
//! their inverses for reading back). [`encode`] and [`decode`] assemble them into the object
//! format; nothing else chains them. Each is a `std::io::Write`/`Read` adapter, so a chain of
//! them runs on one blocking thread and a bounded channel joins it to the async side
//! (`pipe`); back-pressure comes for free.

pub mod compress;
pub mod decode;
pub mod encode;
pub mod encrypt;
pub mod hash;
pub mod pipe;
