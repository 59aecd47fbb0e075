//! The walk over the page summaries, in the order a reader of the file would go: the root
//! bucket's entries, then each bucket's tree depth first, leaves in key order.

use std::path::PathBuf;

use super::parse::{Fed, Parser};
use super::{BucketEntry, EntrySink, Key, Leaf, Summary, INLINE_PAGES};
use crate::bbolt::page::Meta;
use crate::bbolt::{BoltError, BUCKET_HEADER_SIZE, MAX_DEPTH};

/// What the walk meets, in order.
pub enum Event<'a> {
    /// A top-level bucket starts; its leaves follow.
    Bucket(&'a [u8]),
    Leaf {
        page: u64,
        leaf: &'a Leaf,
        /// Whether it holds nested buckets.
        nested: bool,
    },
}

/// Every page summary of one file and its meta page, ready to be walked.
pub struct Tree<S> {
    label: PathBuf,
    meta: Meta,
    pages: Vec<(u64, Summary)>,
    sink: S,
}

impl<S: EntrySink> Tree<S> {
    pub(super) fn new(label: PathBuf, meta: Meta, pages: Vec<(u64, Summary)>, sink: S) -> Self {
        Tree {
            label,
            meta,
            pages,
            sink,
        }
    }

    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// `meta.pgid × page size`, what bbolt reports as the size (`totalSize`).
    pub fn high_water_size(&self) -> u64 {
        self.meta
            .pgid
            .saturating_mul(u64::from(self.meta.page_size))
    }

    pub fn label(&self) -> &std::path::Path {
        &self.label
    }

    pub fn into_sink(self) -> S {
        self.sink
    }

    /// Calls `f` with each top-level bucket, in name order, followed by its leaves in key
    /// order. Inline buckets' pages are parsed here (their entries reach the sink now).
    ///
    /// # Errors
    /// The first damage the walk reaches (naming the page), or the first error of `f`.
    pub fn walk<E: From<BoltError>>(
        &mut self,
        mut f: impl FnMut(&mut S, Event<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut visited = vec![0u64; (self.meta.pgid as usize).div_ceil(64)];
        let mut buckets: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let pages = Pages {
            label: &self.label,
            pgid: self.meta.pgid,
            pages: &self.pages,
        };
        pages.walk_tree(self.meta.root, &mut visited, &mut |_, _, nested| {
            buckets.extend(nested.iter().cloned());
            Ok::<(), E>(())
        })?;
        for (n, (name, value)) in buckets.iter().enumerate() {
            f(&mut self.sink, Event::Bucket(name))?;
            let root = u64::from_le_bytes(value[0..8].try_into().expect("checked length"));
            if root != 0 {
                let sink = &mut self.sink;
                pages.walk_tree(root, &mut visited, &mut |page, leaf, nested| {
                    f(
                        sink,
                        Event::Leaf {
                            page,
                            leaf,
                            nested: !nested.is_empty(),
                        },
                    )
                })?;
                continue;
            }
            let page = INLINE_PAGES + n as u64;
            let (leaf, nested) = inline_leaf(page, &value[BUCKET_HEADER_SIZE..], &mut self.sink)
                .map_err(|reason| BoltError::Corrupt {
                    path: self.label.clone(),
                    page: 0,
                    reason: format!("inline bucket {}: {reason}", String::from_utf8_lossy(name)),
                })?;
            f(
                &mut self.sink,
                Event::Leaf {
                    page,
                    leaf: &leaf,
                    nested,
                },
            )?;
        }
        Ok(())
    }
}

/// Why an inline bucket's page cannot be read.
#[derive(Debug, thiserror::Error)]
enum InlineError {
    #[error("not a leaf page")]
    NotALeaf,
    #[error("{0}")]
    Bad(String),
    #[error("the page ends inside an element")]
    Unfinished,
}

/// An inline bucket's leaf, and whether it holds nested buckets (not walked: etcd has none;
/// they count by name, as in bbolt's `ForEach`).
fn inline_leaf(
    id: u64,
    page: &[u8],
    sink: &mut dyn EntrySink,
) -> Result<(Leaf, bool), InlineError> {
    let mut parser = Parser::inline(id, page).ok_or(InlineError::NotALeaf)?;
    match parser.feed(page, sink) {
        Fed::Done(Summary::Leaf(leaf)) => Ok((leaf, false)),
        Fed::Done(Summary::BucketLeaf(b)) => Ok((b.0, true)),
        Fed::Done(Summary::Bad(reason)) => Err(InlineError::Bad(reason)),
        _ => Err(InlineError::Unfinished),
    }
}

/// A page the walk reached, undamaged.
#[derive(Clone, Copy)]
enum Node<'t> {
    Leaf(&'t Leaf, &'t [BucketEntry]),
    Branch(&'t [u64]),
}

struct Pages<'t> {
    label: &'t PathBuf,
    pgid: u64,
    pages: &'t [(u64, Summary)],
}

impl<'t> Pages<'t> {
    fn corrupt(&self, page: u64, reason: impl Into<String>) -> BoltError {
        BoltError::Corrupt {
            path: self.label.clone(),
            page,
            reason: reason.into(),
        }
    }

    /// The summary of page `id`, checked for range, damage and a second visit.
    fn reach(&self, id: u64, visited: &mut [u64]) -> Result<Node<'t>, BoltError> {
        if id < 2 || id >= self.pgid {
            return Err(self.corrupt(
                id,
                format!("page id outside the file's pages 2..{}", self.pgid),
            ));
        }
        let Ok(at) = self.pages.binary_search_by_key(&id, |(p, _)| *p) else {
            return Err(self.corrupt(
                id,
                "not a branch or leaf page: its header is damaged, or the tree points at a free page",
            ));
        };
        let (node, overflow) = match &self.pages[at].1 {
            Summary::Bad(reason) => return Err(self.corrupt(id, reason.clone())),
            Summary::Leaf(leaf) => (Node::Leaf(leaf, &[]), leaf.overflow),
            Summary::BucketLeaf(b) => (Node::Leaf(&b.0, &b.1), b.0.overflow),
            Summary::Branch { overflow, children } => (Node::Branch(children), *overflow),
        };
        for p in id..=id + u64::from(overflow) {
            let (word, bit) = ((p / 64) as usize, p % 64);
            let slot = visited
                .get_mut(word)
                .ok_or_else(|| self.corrupt(p, "page beyond the high-water mark"))?;
            if *slot & (1 << bit) != 0 {
                return Err(self.corrupt(p, "page reachable twice (the tree is damaged)"));
            }
            *slot |= 1 << bit;
        }
        Ok(node)
    }

    /// Depth first from `root`; `on_leaf` gets each leaf in key order, after the check that
    /// its first key follows the previous leaf's last.
    fn walk_tree<E: From<BoltError>>(
        &self,
        root: u64,
        visited: &mut [u64],
        on_leaf: &mut dyn FnMut(u64, &'t Leaf, &'t [BucketEntry]) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut stack: Vec<(u64, Node<'t>, usize)> = vec![(root, self.reach(root, visited)?, 0)];
        let mut last: Option<&'t Key> = None;
        while let Some((id, node, next)) = stack.last_mut() {
            let id = *id;
            match *node {
                Node::Leaf(leaf, nested) => {
                    stack.pop();
                    if let (Some(prev), Some(first)) = (last, leaf.first.as_ref()) {
                        if !prev.may_precede(first) {
                            return Err(self.corrupt(id, "keys out of order").into());
                        }
                    }
                    last = leaf.last.as_ref().or(last);
                    on_leaf(id, leaf, nested)?;
                }
                Node::Branch(children) => {
                    let Some(&child) = children.get(*next) else {
                        stack.pop();
                        continue;
                    };
                    *next += 1;
                    if stack.len() >= MAX_DEPTH {
                        return Err(self.corrupt(id, "tree deeper than any bbolt file").into());
                    }
                    let child_node = self.reach(child, visited)?;
                    stack.push((child, child_node, 0));
                }
            }
        }
        Ok(())
    }
}
