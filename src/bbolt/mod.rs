//! A small, read-only reader for the bbolt files etcd writes.
//!
//! Why our own: the `bbolt-rs` crate refuses etcd files, because etcd never syncs the freelist
//! (meta `freelist` is `u64::MAX`). We only need ordered iteration over buckets, so this reader
//! walks the B+trees page by page with positioned reads (`pread`): memory stays at a few pages
//! plus a one-bit-per-page visited map, whatever the database size, and nothing is mmapped (so
//! the walk does not inflate RSS with file pages).
//!
//! Every page is checked as it is read (page id in range and equal to its header, expected
//! type, elements inside the page, keys strictly ascending, no page reachable twice), which is
//! what `bbolt check` would catch on a damaged copy.

mod page;
pub mod stream;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use page::{BranchElem, LeafElem, PageHeader};
pub use page::{Meta, PageKind};

/// Bucket element flag in a leaf page.
pub(crate) const BUCKET_LEAF_FLAG: u32 = 0x01;
/// A bucket value starts with its root page id and sequence.
pub(crate) const BUCKET_HEADER_SIZE: usize = 16;
/// bbolt's own limit on tree depth is far lower; this bounds a malicious or cyclic file.
pub(crate) const MAX_DEPTH: usize = 64;

/// What can go wrong reading a snapshot file.
#[derive(Debug, thiserror::Error)]
pub enum BoltError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an etcd snapshot (bbolt) file: {reason}")]
    NotBbolt { path: PathBuf, reason: String },
    #[error("{path} is truncated: page {page} lies beyond the end of the file ({file_len} bytes); the copy is incomplete")]
    Truncated {
        path: PathBuf,
        page: u64,
        file_len: u64,
    },
    #[error("{path} is corrupt at page {page}: {reason}")]
    Corrupt {
        path: PathBuf,
        page: u64,
        reason: String,
    },
}

/// One opened bbolt file with its chosen meta page.
pub struct Db {
    file: File,
    path: PathBuf,
    file_len: u64,
    meta: Meta,
}

/// An entry met while walking a bucket, in key order.
pub enum Entry<'a> {
    KeyValue {
        key: &'a [u8],
        value: &'a [u8],
    },
    /// A nested bucket: its name. etcd never nests buckets, but the file format allows it.
    Bucket {
        name: &'a [u8],
    },
}

impl Db {
    /// Opens a bbolt file and picks the valid meta page with the higher transaction id.
    ///
    /// # Errors
    /// `Io` when the file cannot be read, `NotBbolt` when neither meta page is valid.
    pub fn open(path: &Path) -> Result<Db, BoltError> {
        let io = |source| BoltError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let mut first = vec![0u8; page::MIN_PAGE_SIZE];
        let read = read_up_to(&file, 0, &mut first).map_err(io)?;
        let meta0 = Meta::parse(&first[..read]);
        let page_size = match &meta0 {
            Ok(m) => m.page_size as usize,
            // meta 0 is damaged: bbolt then falls back to the OS page size to find meta 1.
            Err(_) => page::MIN_PAGE_SIZE,
        };
        let mut second = vec![0u8; page_size];
        let read = read_up_to(&file, page_size as u64, &mut second).map_err(io)?;
        let meta1 = Meta::parse(&second[..read]);
        let meta = page::choose_meta(meta0, meta1).map_err(|e| BoltError::NotBbolt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let db = Db {
            file,
            path: path.to_path_buf(),
            file_len,
            meta,
        };
        db.check_meta_fits()?;
        Ok(db)
    }

    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `meta.pgid × page size`: what bbolt reports as the transaction size (`totalSize`).
    /// [`Db::open`] has checked that it fits in the file, so it does not overflow.
    pub fn high_water_size(&self) -> u64 {
        self.meta
            .pgid
            .saturating_mul(u64::from(self.meta.page_size))
    }

    /// The meta page is checksummed, but the checksum is no secret: a crafted file can claim
    /// any page count. Everything later sizes itself from it, so it must fit the file.
    fn check_meta_fits(&self) -> Result<(), BoltError> {
        let fits = self
            .meta
            .pgid
            .checked_mul(u64::from(self.meta.page_size))
            .is_some_and(|size| size <= self.file_len);
        if !fits {
            return Err(BoltError::Truncated {
                path: self.path.clone(),
                page: self.meta.pgid.saturating_sub(1),
                file_len: self.file_len,
            });
        }
        Ok(())
    }

    /// A walker that remembers which pages it has visited, so a page reachable twice is
    /// reported as corruption. Use one walker for a whole pass over the file.
    pub fn walker(&self) -> Walker<'_> {
        Walker {
            db: self,
            visited: vec![0u64; (self.meta.pgid as usize).div_ceil(64)],
            check_shared_pages: true,
        }
    }

    /// A walker that does not track visited pages: for passes that re-read part of the file.
    pub fn rewalker(&self) -> Walker<'_> {
        Walker {
            db: self,
            visited: Vec::new(),
            check_shared_pages: false,
        }
    }

    fn corrupt(&self, page: u64, reason: impl Into<String>) -> BoltError {
        BoltError::Corrupt {
            path: self.path.clone(),
            page,
            reason: reason.into(),
        }
    }

    fn read_page(&self, id: u64) -> Result<Vec<u8>, BoltError> {
        if id < 2 || id >= self.meta.pgid {
            return Err(self.corrupt(
                id,
                format!("page id outside the file's pages 2..{}", self.meta.pgid),
            ));
        }
        let page_size = u64::from(self.meta.page_size);
        let offset = id * page_size;
        let mut buf = vec![0u8; page_size as usize];
        self.read_exact_at(&mut buf, offset, id)?;
        let header = PageHeader::parse(&buf);
        if header.id != id {
            return Err(self.corrupt(id, format!("page header says id {}", header.id)));
        }
        if header.overflow > 0 {
            let total = (u64::from(header.overflow) + 1) * page_size;
            if id + u64::from(header.overflow) >= self.meta.pgid {
                return Err(self.corrupt(id, "overflow pages run past the high-water mark"));
            }
            buf.resize(total as usize, 0);
            self.read_exact_at(&mut buf[page_size as usize..], offset + page_size, id)?;
        }
        Ok(buf)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64, page: u64) -> Result<(), BoltError> {
        if offset + buf.len() as u64 > self.file_len {
            return Err(BoltError::Truncated {
                path: self.path.clone(),
                page,
                file_len: self.file_len,
            });
        }
        self.file
            .read_exact_at(buf, offset)
            .map_err(|source| BoltError::Io {
                path: self.path.clone(),
                source,
            })
    }
}

fn read_up_to(file: &File, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64)? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
}

/// A visitor of leaf entries: the entry, and the raw value bytes (a bucket's header for buckets).
type Visit<'f, E> = dyn FnMut(Entry<'_>, &[u8]) -> Result<(), E> + 'f;

/// Walks buckets in key order.
pub struct Walker<'d> {
    db: &'d Db,
    visited: Vec<u64>,
    check_shared_pages: bool,
}

impl<'d> Walker<'d> {
    /// Calls `f` with each top-level bucket name and a cursor on that bucket, in name order.
    ///
    /// # Errors
    /// Any read or integrity error, or the first error `f` returns.
    pub fn for_each_bucket<E>(
        &mut self,
        mut f: impl FnMut(&mut Self, &[u8], BucketRef) -> Result<(), E>,
    ) -> Result<(), E>
    where
        E: From<BoltError>,
    {
        let root = self.db.meta.root;
        let mut buckets: Vec<(Vec<u8>, BucketRef)> = Vec::new();
        self.walk_tree(root, &mut |entry, raw| {
            if let Entry::Bucket { name } = entry {
                buckets.push((name.to_vec(), BucketRef::from_value(raw)));
            }
            Ok(())
        })?;
        for (name, bucket) in buckets {
            f(self, &name, bucket)?;
        }
        Ok(())
    }

    /// Looks a top-level bucket up by name.
    pub fn bucket(&mut self, name: &[u8]) -> Result<Option<BucketRef>, BoltError> {
        let mut found = None;
        self.walk_tree(self.db.meta.root, &mut |entry, raw| {
            if let Entry::Bucket { name: n } = entry {
                if n == name {
                    found = Some(BucketRef::from_value(raw));
                }
            }
            Ok(())
        })?;
        Ok(found)
    }

    /// Visits every entry of `bucket` in key order.
    pub fn for_each<E>(
        &mut self,
        bucket: &BucketRef,
        mut f: impl FnMut(Entry<'_>) -> Result<(), E>,
    ) -> Result<(), E>
    where
        E: From<BoltError>,
    {
        match &bucket.inline {
            Some(page) => self.walk_inline(page, &mut |e, _| f(e)),
            None => self.walk_tree(bucket.root, &mut |e, _| f(e)),
        }
    }

    fn mark_visited(&mut self, id: u64, overflow: u32) -> Result<(), BoltError> {
        if !self.check_shared_pages {
            return Ok(());
        }
        for p in id..=id + u64::from(overflow) {
            let (word, bit) = ((p / 64) as usize, p % 64);
            let Some(slot) = self.visited.get_mut(word) else {
                return Err(self.db.corrupt(p, "page beyond the high-water mark"));
            };
            if *slot & (1 << bit) != 0 {
                return Err(self
                    .db
                    .corrupt(p, "page reachable twice (the tree is damaged)"));
            }
            *slot |= 1 << bit;
        }
        Ok(())
    }

    fn walk_inline<E>(&mut self, page: &[u8], f: &mut Visit<'_, E>) -> Result<(), E>
    where
        E: From<BoltError>,
    {
        let header = PageHeader::parse(page);
        if header.kind() != Some(PageKind::Leaf) {
            return Err(self
                .db
                .corrupt(0, "inline bucket is not a leaf page")
                .into());
        }
        let mut last_key: Option<Vec<u8>> = None;
        self.visit_leaf(page, 0, &mut last_key, f)
    }

    /// Depth-first, in-order walk of the tree rooted at `root`.
    fn walk_tree<E>(&mut self, root: u64, f: &mut Visit<'_, E>) -> Result<(), E>
    where
        E: From<BoltError>,
    {
        // Stack of (page buffer, next child index); a branch page stays on it while its
        // children are walked, so memory is depth × page size.
        let mut stack: Vec<(u64, Vec<u8>, usize)> = Vec::new();
        let mut last_key: Option<Vec<u8>> = None;
        self.push_page(&mut stack, root)?;
        while let Some((id, buf, next)) = stack.last_mut() {
            let id = *id;
            let header = PageHeader::parse(buf);
            match header.kind() {
                Some(PageKind::Leaf) => {
                    let (_, buf, _) = stack.pop().expect("top exists");
                    self.visit_leaf(&buf, id, &mut last_key, f)?;
                }
                Some(PageKind::Branch) => {
                    let count = usize::from(header.count);
                    if *next >= count {
                        stack.pop();
                        continue;
                    }
                    let elem = BranchElem::parse(buf, *next)
                        .ok_or_else(|| self.db.corrupt(id, "branch element outside the page"))?;
                    *next += 1;
                    if stack.len() >= MAX_DEPTH {
                        return Err(self
                            .db
                            .corrupt(id, "tree deeper than any bbolt file")
                            .into());
                    }
                    self.push_page(&mut stack, elem.pgid)?;
                }
                _ => {
                    return Err(self
                        .db
                        .corrupt(id, format!("unexpected page type {:#x}", header.flags))
                        .into())
                }
            }
        }
        Ok(())
    }

    fn push_page(
        &mut self,
        stack: &mut Vec<(u64, Vec<u8>, usize)>,
        id: u64,
    ) -> Result<(), BoltError> {
        let buf = self.db.read_page(id)?;
        let header = PageHeader::parse(&buf);
        self.mark_visited(id, header.overflow)?;
        stack.push((id, buf, 0));
        Ok(())
    }

    fn visit_leaf<E>(
        &mut self,
        buf: &[u8],
        id: u64,
        last_key: &mut Option<Vec<u8>>,
        f: &mut Visit<'_, E>,
    ) -> Result<(), E>
    where
        E: From<BoltError>,
    {
        let header = PageHeader::parse(buf);
        for i in 0..usize::from(header.count) {
            let elem = LeafElem::parse(buf, i)
                .ok_or_else(|| self.db.corrupt(id, "leaf element outside the page"))?;
            let (key, value) = elem
                .key_value(buf)
                .ok_or_else(|| self.db.corrupt(id, "key or value outside the page"))?;
            if let Some(prev) = last_key.as_deref() {
                if prev >= key {
                    return Err(self.db.corrupt(id, "keys out of order").into());
                }
            }
            *last_key = Some(key.to_vec());
            if elem.flags & BUCKET_LEAF_FLAG != 0 {
                if value.len() < BUCKET_HEADER_SIZE {
                    return Err(self.db.corrupt(id, "bucket header too short").into());
                }
                f(Entry::Bucket { name: key }, value)?;
            } else {
                f(Entry::KeyValue { key, value }, value)?;
            }
        }
        Ok(())
    }
}

/// Where a bucket's tree lives: a root page, or an inline page carried in its value.
#[derive(Clone, Debug)]
pub struct BucketRef {
    root: u64,
    inline: Option<Vec<u8>>,
}

impl BucketRef {
    fn from_value(value: &[u8]) -> BucketRef {
        let root = u64::from_le_bytes(value[0..8].try_into().expect("checked length"));
        let inline = (root == 0).then(|| value[BUCKET_HEADER_SIZE..].to_vec());
        BucketRef { root, inline }
    }
}

/// The length of the bbolt part of a snapshot file: files that `etcdctl snapshot save` wrote
/// carry a 32-byte sha256 trailer, recognised (as etcd does) by `len % 512 == 32`.
pub fn has_sha256_trailer(file_len: u64) -> bool {
    file_len % 512 == 32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailer_is_recognised_by_length() {
        assert!(has_sha256_trailer(4096 * 6 + 32));
        assert!(!has_sha256_trailer(4096 * 6));
    }

    #[test]
    fn a_file_that_is_not_bbolt_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("notes.txt");
        std::fs::write(&p, b"hello, this is not a database".repeat(500)).unwrap();
        let err = Db::open(&p).err().expect("must fail");
        let msg = err.to_string();
        assert!(
            msg.contains("notes.txt") && msg.contains("not an etcd snapshot"),
            "{msg}"
        );
    }

    #[test]
    fn an_empty_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("empty.db");
        std::fs::write(&p, b"").unwrap();
        assert!(matches!(Db::open(&p), Err(BoltError::NotBbolt { .. })));
    }
}
