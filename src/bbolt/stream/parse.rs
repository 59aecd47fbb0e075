//! One page, parsed as its bytes arrive.
//!
//! A page of one `page_size` is parsed from one call; a page with overflow pages keeps its
//! parser open across the calls that bring the rest. Only what the summary needs is kept: the
//! element table, the key being read, the first bytes of each value (an etcd `KeyValue` starts
//! with its user key), and whole values only for bucket entries (a bucket header, and an
//! inline bucket's page).
//!
//! bbolt writes a page as header, element table, then each element's key and value in element
//! order with no gaps (`node.write`). The parser relies on that layout and calls a page that
//! breaks it damaged: a reader of the file could jump to any offset, a streaming one cannot
//! go back, and no page bbolt wrote is laid out otherwise.

use super::{BucketEntry, EntryRef, EntrySink, Key, Leaf, Summary};
use crate::bbolt::page::{PageHeader, PageKind, PAGE_HEADER_SIZE};
use crate::bbolt::{BUCKET_HEADER_SIZE, BUCKET_LEAF_FLAG};

const ELEM_SIZE: usize = 16;
/// bbolt refuses longer keys (`MaxKeySize`); a longer one means a damaged page.
const MAX_KEY_SIZE: usize = 32_768;
/// How much of each value the sink sees: an etcd `KeyValue` starts with its key.
pub const VALUE_HEAD: usize = 8 * 1024;
/// A bucket's value is its header, plus its page when inline (at most a quarter page; pages
/// are at most 1 MiB).
const MAX_BUCKET_VALUE: usize = BUCKET_HEADER_SIZE + (1 << 20);

/// What feeding a parser led to.
pub enum Fed {
    /// It needs the next page's bytes.
    Open,
    Done(Summary),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Table,
    EntryStart,
    Key,
    Value,
}

enum Step {
    /// Go on with the next state (possibly without bytes: empty keys and values).
    Next,
    /// Every byte of this call is used.
    NeedBytes,
    Done,
    Bad(&'static str),
}

pub struct Parser {
    pub id: u64,
    kind: PageKind,
    count: usize,
    /// The page's whole length, overflow pages included.
    total: usize,
    /// Bytes of the page seen so far.
    at: usize,
    state: State,
    table: Vec<u8>,
    elem: usize,
    key: Vec<u8>,
    prev_key: Option<Vec<u8>>,
    value: Vec<u8>,
    value_seen: usize,
    entry_crc: u32,
    leaf: Leaf,
    /// What `leaf.len` will be (checked to fit when the page is done).
    len: u64,
    buckets: Vec<BucketEntry>,
}

impl Parser {
    /// A parser for the page whose first bytes are `first` (at least a page header), if the
    /// header says branch or leaf; `None` when no tree page starts here.
    pub fn start(id: u64, first: &[u8], page_size: usize) -> Option<Parser> {
        if first.len() < PAGE_HEADER_SIZE {
            return None;
        }
        let header = PageHeader::parse(first);
        let kind = header
            .kind()
            .filter(|k| matches!(k, PageKind::Branch | PageKind::Leaf))?;
        Some(Parser {
            id,
            kind,
            count: usize::from(header.count),
            total: (header.overflow as usize + 1).saturating_mul(page_size),
            at: 0,
            state: State::Table,
            table: Vec::new(),
            elem: 0,
            key: Vec::new(),
            prev_key: None,
            value: Vec::new(),
            value_seen: 0,
            entry_crc: 0,
            leaf: Leaf {
                overflow: header.overflow,
                ..Leaf::default()
            },
            len: 0,
            buckets: Vec::new(),
        })
    }

    /// A parser for an inline bucket's page: all of `page`, which must be a leaf.
    pub fn inline(id: u64, page: &[u8]) -> Option<Parser> {
        let mut p = Parser::start(id, page, page.len())?;
        p.total = page.len();
        p.leaf.overflow = 0;
        (p.kind == PageKind::Leaf).then_some(p)
    }

    /// Feeds the next bytes of this page (the first call: from its header on).
    pub fn feed(&mut self, mut bytes: &[u8], sink: &mut dyn EntrySink) -> Fed {
        if self.at == 0 {
            if PAGE_HEADER_SIZE + self.count * ELEM_SIZE > self.total {
                return Fed::Done(Summary::Bad(match self.kind {
                    PageKind::Branch => "branch element outside the page".into(),
                    _ => "leaf element outside the page".into(),
                }));
            }
            self.take(&mut bytes, PAGE_HEADER_SIZE);
        }
        loop {
            let step = match self.state {
                State::Table => self.read_table(&mut bytes),
                State::EntryStart => self.start_entry(),
                State::Key => self.read_key(&mut bytes),
                State::Value => self.read_value(&mut bytes, sink),
            };
            match step {
                Step::Next => {}
                Step::NeedBytes if self.at >= self.total => {
                    return Fed::Done(Summary::Bad("the page ends inside an element".into()))
                }
                Step::NeedBytes => return Fed::Open,
                Step::Done => return Fed::Done(self.summary()),
                Step::Bad(reason) => return Fed::Done(Summary::Bad(reason.into())),
            }
        }
    }

    fn take<'b>(&mut self, bytes: &mut &'b [u8], want: usize) -> &'b [u8] {
        let n = want.min(bytes.len());
        let (taken, rest) = bytes.split_at(n);
        *bytes = rest;
        self.at += n;
        taken
    }

    fn read_table(&mut self, bytes: &mut &[u8]) -> Step {
        let want = self.count * ELEM_SIZE - self.table.len();
        let taken = self.take(bytes, want);
        self.table.extend_from_slice(taken);
        if self.table.len() < self.count * ELEM_SIZE {
            return Step::NeedBytes;
        }
        if self.kind == PageKind::Branch {
            return Step::Done;
        }
        self.state = State::EntryStart;
        Step::Next
    }

    /// Flags, pos, key size and value size of element `i`.
    fn elem(&self, i: usize) -> (u32, usize, usize, usize) {
        let e = &self.table[i * ELEM_SIZE..(i + 1) * ELEM_SIZE];
        let u = |at: usize| u32::from_le_bytes(e[at..at + 4].try_into().expect("16-byte element"));
        (u(0), u(4) as usize, u(8) as usize, u(12) as usize)
    }

    fn start_entry(&mut self) -> Step {
        if self.elem == self.count {
            return Step::Done;
        }
        let (flags, pos, ksize, vsize) = self.elem(self.elem);
        let elem_at = PAGE_HEADER_SIZE + self.elem * ELEM_SIZE;
        let end = elem_at
            .checked_add(pos)
            .and_then(|s| s.checked_add(ksize))
            .and_then(|s| s.checked_add(vsize));
        if end.is_none_or(|end| end > self.total) {
            return Step::Bad("key or value outside the page");
        }
        if elem_at + pos != self.at {
            return Step::Bad("an element's data is not where bbolt writes it");
        }
        if ksize > MAX_KEY_SIZE {
            return Step::Bad("a key longer than bbolt allows");
        }
        if flags & BUCKET_LEAF_FLAG != 0 && vsize > MAX_BUCKET_VALUE {
            return Step::Bad("a bucket value larger than any bucket header and inline page");
        }
        self.key.clear();
        self.value.clear();
        self.value_seen = 0;
        self.entry_crc = 0;
        self.state = State::Key;
        Step::Next
    }

    fn read_key(&mut self, bytes: &mut &[u8]) -> Step {
        let (_, _, ksize, _) = self.elem(self.elem);
        let taken = self.take(bytes, ksize - self.key.len());
        self.key.extend_from_slice(taken);
        if self.key.len() < ksize {
            return Step::NeedBytes;
        }
        if self
            .prev_key
            .as_deref()
            .is_some_and(|prev| prev >= &self.key[..])
        {
            return Step::Bad("keys out of order");
        }
        self.entry_crc = crc32c::crc32c(&self.key);
        self.leaf.crc = crc32c::crc32c_append(self.leaf.crc, &self.key);
        self.len += self.key.len() as u64;
        self.leaf.count += 1;
        if self.leaf.first.is_none() {
            self.leaf.first = Some(Key::new(&self.key));
        }
        self.state = State::Value;
        Step::Next
    }

    fn read_value(&mut self, bytes: &mut &[u8], sink: &mut dyn EntrySink) -> Step {
        let (flags, _, _, vsize) = self.elem(self.elem);
        let is_bucket = flags & BUCKET_LEAF_FLAG != 0;
        let taken = self.take(bytes, vsize - self.value_seen);
        self.value_seen += taken.len();
        if is_bucket {
            // A nested bucket counts as its name alone (bbolt's ForEach gives it a nil value).
            self.value.extend_from_slice(taken);
        } else {
            self.entry_crc = crc32c::crc32c_append(self.entry_crc, taken);
            self.leaf.crc = crc32c::crc32c_append(self.leaf.crc, taken);
            self.len += taken.len() as u64;
            let room = VALUE_HEAD.saturating_sub(self.value.len()).min(taken.len());
            self.value.extend_from_slice(&taken[..room]);
        }
        if self.value_seen < vsize {
            return Step::NeedBytes;
        }
        if is_bucket {
            if self.value.len() < BUCKET_HEADER_SIZE {
                return Step::Bad("bucket header too short");
            }
            let name = std::mem::take(&mut self.key);
            let value = std::mem::take(&mut self.value);
            self.prev_key = Some(name.clone());
            self.buckets.push((name, value));
        } else {
            sink.entry(&EntryRef {
                page: self.id,
                key: &self.key,
                value_head: &self.value,
                value_len: vsize as u64,
                crc: self.entry_crc,
                len: (self.key.len() + vsize) as u64,
            });
            self.prev_key = Some(std::mem::take(&mut self.key));
        }
        self.elem += 1;
        self.state = State::EntryStart;
        Step::Next
    }

    fn summary(&mut self) -> Summary {
        match self.kind {
            PageKind::Branch => Summary::Branch {
                overflow: self.leaf.overflow,
                children: (0..self.count)
                    .map(|i| {
                        let e = &self.table[i * ELEM_SIZE..(i + 1) * ELEM_SIZE];
                        u64::from_le_bytes(e[8..16].try_into().expect("16-byte element"))
                    })
                    .collect(),
            },
            _ => {
                let mut leaf = std::mem::take(&mut self.leaf);
                let Ok(len) = u32::try_from(self.len) else {
                    return Summary::Bad("a leaf of more than 4 GiB of keys and values".into());
                };
                leaf.len = len;
                leaf.last = self.prev_key.take().map(|k| Key::new(&k));
                if self.buckets.is_empty() {
                    Summary::Leaf(leaf)
                } else {
                    Summary::BucketLeaf(Box::new((leaf, std::mem::take(&mut self.buckets))))
                }
            }
        }
    }
}
