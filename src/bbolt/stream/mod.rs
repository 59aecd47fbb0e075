//! Reading a bbolt file as it streams by, once, without keeping it.
//!
//! `tx.WriteTo` (what etcd's snapshot sends) writes the two meta pages first and then every
//! page in id order. The tree is not in page order, so each page is summarised as it passes —
//! a leaf by the CRC-32C of its keys and values, its length, its entry count and its first
//! and last key; a branch by its children — and the tree is walked over the summaries at the
//! end. CRC-32C values combine (`crc(A‖B)` from `crc(A)`, `crc(B)` and `len(B)`), so the
//! walk yields the same hashes as reading the entries in key order, with the same checks as
//! [`crate::bbolt::Walker`]: page ids in range, page kinds, elements inside their page, keys
//! ascending across the whole bucket, no page reachable twice.
//!
//! A page whose liveness is unknown when it passes (free pages keep stale headers) is
//! summarised anyway; a damaged one is remembered as damaged and reported only if the walk
//! reaches it. Memory: a summary per branch or leaf page (~100 bytes; the file's pages are
//! 4 KiB or more), whatever the sizes of the values.

pub mod crc;
mod parse;
mod tree;

use std::path::{Path, PathBuf};

use super::page::{Meta, MIN_PAGE_SIZE};
use super::BoltError;
pub use parse::VALUE_HEAD;
use parse::{Fed, Parser};
pub use tree::{Event, Tree};

/// Pages whose overflow pages are still arriving, at most: beyond it a new one is recorded as
/// unreadable in one pass (an error only if the tree reaches it). Live pages never overlap;
/// only stale headers in free pages and value bytes that look like headers do.
const MAX_OPEN_PAGES: usize = 64;
/// Enough of page 0 to read its meta (header and checksummed fields).
const META_BYTES: usize = 80;

/// One key-value entry of a leaf, as the stream passes it.
pub struct EntryRef<'a> {
    /// The page it lies on (an inline bucket's entries: an id from `INLINE_PAGES` up).
    pub page: u64,
    pub key: &'a [u8],
    /// The first [`VALUE_HEAD`] bytes of the value.
    pub value_head: &'a [u8],
    pub value_len: u64,
    /// CRC-32C of the key followed by the value, and their length.
    pub crc: u32,
    pub len: u64,
}

/// Receives every key-value entry of every branch-or-leaf-looking page (live or not: the
/// walk tells later which pages count).
pub trait EntrySink {
    fn entry(&mut self, entry: &EntryRef<'_>);
}

/// Ids given to inline buckets' pages, which have none of their own.
pub const INLINE_PAGES: u64 = 1 << 63;

/// A key kept for the order check between leaves; etcd's revision keys fit inline. At most
/// [`KEY_KEPT`] bytes of a key are kept: the summaries of every leaf stay until the stream
/// ends, and a crafted stream (anyone can encrypt to the public recipient) with a page-sized
/// key in every leaf would otherwise hold about as much memory as the file (#21).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    Short(u8, [u8; 22]),
    Long(Box<[u8]>),
    /// The first [`KEY_KEPT`] bytes of a longer key.
    Capped(Box<[u8]>),
}

/// How much of a long key a leaf summary keeps.
pub const KEY_KEPT: usize = 64;

impl Key {
    fn new(bytes: &[u8]) -> Key {
        if bytes.len() <= 22 {
            let mut b = [0u8; 22];
            b[..bytes.len()].copy_from_slice(bytes);
            Key::Short(bytes.len() as u8, b)
        } else if bytes.len() <= KEY_KEPT {
            Key::Long(bytes.into())
        } else {
            Key::Capped(bytes[..KEY_KEPT].into())
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        match self {
            Key::Short(n, b) => &b[..usize::from(*n)],
            Key::Long(b) | Key::Capped(b) => b,
        }
    }

    /// Whether this key (a leaf's last) may come before `next` (the next leaf's first), as far
    /// as the bytes kept tell: two keys that share their kept bytes, one of them longer, cannot
    /// be told apart and pass; everything else is decided exactly.
    pub fn may_precede(&self, next: &Key) -> bool {
        let (a, b) = (self.as_slice(), next.as_slice());
        let capped = matches!(self, Key::Capped(_)) || matches!(next, Key::Capped(_));
        a < b || (a == b && capped)
    }
}

/// A bucket's name and whole value.
pub type BucketEntry = (Vec<u8>, Vec<u8>);

/// What a leaf page holds, for the walk. 64 bytes: one per leaf is kept until the end.
#[derive(Default, Debug)]
pub struct Leaf {
    pub overflow: u32,
    /// Entries (a nested bucket counts, as in bbolt's `ForEach`).
    pub count: u32,
    /// CRC-32C of every key and value in order (a nested bucket: its name only), and the
    /// length it covers (a page is at most 4 GiB: longer ones are summarised as damaged).
    pub crc: u32,
    pub len: u32,
    pub first: Option<Key>,
    pub last: Option<Key>,
}

#[derive(Debug)]
pub enum Summary {
    Leaf(Leaf),
    /// A leaf with bucket entries (name and whole value: header, and the page of an inline
    /// bucket); boxed, as only the root bucket's leaves have any.
    BucketLeaf(Box<(Leaf, Vec<BucketEntry>)>),
    Branch {
        overflow: u32,
        children: Box<[u64]>,
    },
    /// Looks like a tree page but is damaged; why.
    Bad(String),
}

/// The page size and meta page, once the first two pages have passed.
struct Layout {
    page_size: usize,
    meta: Meta,
}

/// Feeds on a bbolt file's bytes in order; [`PageStream::finish`] gives the [`Tree`].
pub struct PageStream<S> {
    label: PathBuf,
    sink: S,
    head: Vec<u8>,
    layout: Option<Layout>,
    not_bbolt: Option<String>,
    partial: Vec<u8>,
    next_id: u64,
    received: u64,
    open: Vec<Parser>,
    pages: Vec<(u64, Summary)>,
}

impl<S: EntrySink> PageStream<S> {
    /// `label` names the stream in errors (the object or file it comes from).
    pub fn new(label: &Path, sink: S) -> PageStream<S> {
        PageStream {
            label: label.to_path_buf(),
            sink,
            head: Vec::new(),
            layout: None,
            not_bbolt: None,
            partial: Vec::new(),
            next_id: 2,
            received: 0,
            open: Vec::new(),
            pages: Vec::new(),
        }
    }

    /// The next bytes of the file, in order, in pieces of any size.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        self.received += bytes.len() as u64;
        if self.not_bbolt.is_some() {
            return;
        }
        if self.layout.is_none() {
            self.read_head(&mut bytes);
        }
        let Some(page_size) = self.layout.as_ref().map(|l| l.page_size) else {
            return;
        };
        if !self.partial.is_empty() {
            let want = page_size - self.partial.len();
            let n = want.min(bytes.len());
            self.partial.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.partial.len() < page_size {
                return;
            }
            let page = std::mem::take(&mut self.partial);
            self.page(&page);
            self.partial = page;
            self.partial.clear();
        }
        while bytes.len() >= page_size {
            let (page, rest) = bytes.split_at(page_size);
            self.page(page);
            bytes = rest;
        }
        self.partial.extend_from_slice(bytes);
    }

    /// Collects the first two pages and picks the meta page as [`crate::bbolt::Db::open`]
    /// does: the valid one with the higher transaction id; meta 0's page size, or the OS
    /// page size when meta 0 is damaged.
    fn read_head(&mut self, bytes: &mut &[u8]) {
        if !self.fill_head(bytes, META_BYTES) {
            return;
        }
        let page_size = Meta::parse(&self.head[..META_BYTES])
            .ok()
            .map_or(MIN_PAGE_SIZE, |m| m.page_size as usize);
        if !self.fill_head(bytes, 2 * page_size) {
            return;
        }
        let meta = match super::page::choose_meta(
            Meta::parse(&self.head[..page_size]),
            Meta::parse(&self.head[page_size..]),
        ) {
            Ok(meta) => meta,
            Err(e) => {
                self.not_bbolt = Some(e.to_string());
                return;
            }
        };
        if meta.page_size as usize != page_size {
            self.not_bbolt = Some(format!(
                "the meta pages disagree on the page size ({page_size} and {})",
                meta.page_size
            ));
            return;
        }
        self.layout = Some(Layout { page_size, meta });
        self.head = Vec::new();
    }

    /// Moves bytes into the head until it holds `want`; whether it does.
    fn fill_head(&mut self, bytes: &mut &[u8], want: usize) -> bool {
        let n = want.saturating_sub(self.head.len()).min(bytes.len());
        self.head.extend_from_slice(&bytes[..n]);
        *bytes = &bytes[n..];
        self.head.len() >= want
    }

    fn page(&mut self, page: &[u8]) {
        let Some(layout) = &self.layout else { return };
        let (page_size, pgid) = (layout.page_size, layout.meta.pgid);
        let id = self.next_id;
        self.next_id += 1;
        if id >= pgid {
            return;
        }
        let sink = &mut self.sink;
        let pages = &mut self.pages;
        self.open.retain_mut(|p| match p.feed(page, sink) {
            Fed::Open => true,
            Fed::Done(summary) => {
                pages.push((p.id, summary));
                false
            }
        });
        let header = super::page::PageHeader::parse(page);
        if header.id != id {
            return; // not where a page starts (or a damaged header: the walk says so)
        }
        let Some(mut parser) = Parser::start(id, page, page_size) else {
            return;
        };
        if id + u64::from(header.overflow) >= pgid {
            let reason = "overflow pages run past the high-water mark".to_string();
            self.pages.push((id, Summary::Bad(reason)));
            return;
        }
        match parser.feed(page, &mut self.sink) {
            Fed::Done(summary) => self.pages.push((id, summary)),
            Fed::Open if self.open.len() >= MAX_OPEN_PAGES => self.pages.push((
                id,
                Summary::Bad("too many overlapping multi-page pages to read in one pass".into()),
            )),
            Fed::Open => self.open.push(parser),
        }
    }

    /// Ends the stream: every page must have arrived.
    ///
    /// # Errors
    /// `NotBbolt` when neither meta page is valid; `Truncated` when pages are missing.
    pub fn finish(mut self) -> Result<Tree<S>, BoltError> {
        if let Some(reason) = self.not_bbolt.take() {
            return Err(BoltError::NotBbolt {
                path: self.label,
                reason,
            });
        }
        let Some(layout) = self.layout.take() else {
            return Err(match Meta::parse(&self.head) {
                // Meta 0 is fine: the stream ended before meta 1.
                Ok(_) => BoltError::Truncated {
                    path: self.label,
                    page: 1,
                    file_len: self.received,
                },
                Err(reason) => BoltError::NotBbolt {
                    path: self.label,
                    reason: reason.to_string(),
                },
            });
        };
        let expected = layout.meta.pgid.saturating_mul(layout.page_size as u64);
        if self.received < expected {
            return Err(BoltError::Truncated {
                path: self.label,
                page: self.next_id,
                file_len: self.received,
            });
        }
        for p in self.open.drain(..) {
            self.pages
                .push((p.id, Summary::Bad("the page ends inside an element".into())));
        }
        self.pages.sort_unstable_by_key(|(id, _)| *id);
        Ok(Tree::new(self.label, layout.meta, self.pages, self.sink))
    }
}

#[cfg(test)]
mod key_tests {
    use super::*;

    /// #21: a summary keeps at most KEY_KEPT bytes of a key; the order between leaves is still
    /// decided exactly wherever the kept bytes differ.
    #[test]
    fn long_keys_are_capped_and_still_ordered() {
        let long = |fill: u8, tail: u8| {
            let mut k = vec![fill; 4096];
            k.push(tail);
            Key::new(&k)
        };
        let a = long(b'a', 1);
        assert_eq!(a.as_slice().len(), KEY_KEPT);
        assert!(matches!(a, Key::Capped(_)));
        assert!(a.may_precede(&long(b'b', 0)), "differ in the kept bytes");
        assert!(!long(b'b', 0).may_precede(&a), "out of order");
        assert!(a.may_precede(&long(b'a', 2)), "undecidable: passes");
        let short = Key::new(b"k1");
        assert!(short.may_precede(&Key::new(b"k2")));
        assert!(!short.may_precede(&Key::new(b"k1")), "a repeated key");
        assert!(!Key::new(b"k2").may_precede(&short));
    }
}
