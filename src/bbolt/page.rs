//! bbolt's on-disk page layout (little-endian, as bbolt writes it on every platform etcd runs on).

pub const PAGE_HEADER_SIZE: usize = 16;
const ELEM_SIZE: usize = 16;
pub const MIN_PAGE_SIZE: usize = 4096;
const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
const META_OFFSET: usize = PAGE_HEADER_SIZE;
/// The checksum covers the meta struct up to (not including) the checksum field.
const META_CHECKSUMMED_LEN: usize = 56;

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().expect("in bounds"))
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("in bounds"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("in bounds"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageKind {
    Branch,
    Leaf,
    Meta,
    Freelist,
}

pub struct PageHeader {
    pub id: u64,
    pub flags: u16,
    pub count: u16,
    pub overflow: u32,
}

impl PageHeader {
    /// Callers hand in at least a page header's worth of bytes (every page buffer is ≥ 4 KiB;
    /// inline pages are checked by the caller).
    pub fn parse(b: &[u8]) -> PageHeader {
        if b.len() < PAGE_HEADER_SIZE {
            return PageHeader {
                id: 0,
                flags: 0,
                count: 0,
                overflow: 0,
            };
        }
        PageHeader {
            id: u64_at(b, 0),
            flags: u16_at(b, 8),
            count: u16_at(b, 10),
            overflow: u32_at(b, 12),
        }
    }

    pub fn kind(&self) -> Option<PageKind> {
        match self.flags {
            0x01 => Some(PageKind::Branch),
            0x02 => Some(PageKind::Leaf),
            0x04 => Some(PageKind::Meta),
            0x10 => Some(PageKind::Freelist),
            _ => None,
        }
    }
}

/// The fields of a meta page that the reader uses.
#[derive(Debug, Clone)]
pub struct Meta {
    pub page_size: u32,
    /// Root page of the root bucket (whose entries are the top-level buckets).
    pub root: u64,
    /// `u64::MAX` in etcd files: etcd does not sync the freelist.
    pub freelist: u64,
    /// High-water mark: the number of pages in use.
    pub pgid: u64,
    pub txid: u64,
}

/// Why a page is not a valid meta page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaError {
    #[error("only {0} bytes, too short for a meta page")]
    Short(usize),
    #[error("bad magic {0:#010x} (expected {MAGIC:#010x})")]
    Magic(u32),
    #[error("unsupported bbolt version {0}")]
    Version(u32),
    #[error("meta page checksum mismatch")]
    Checksum,
    #[error("implausible page size {0}")]
    PageSize(u32),
}

impl Meta {
    /// Parses and validates one meta page (magic, version, checksum, page size).
    pub fn parse(page: &[u8]) -> Result<Meta, MetaError> {
        if page.len() < META_OFFSET + META_CHECKSUMMED_LEN + 8 {
            return Err(MetaError::Short(page.len()));
        }
        let m = &page[META_OFFSET..];
        let magic = u32_at(m, 0);
        if magic != MAGIC {
            return Err(MetaError::Magic(magic));
        }
        let version = u32_at(m, 4);
        if version != VERSION {
            return Err(MetaError::Version(version));
        }
        let checksum = u64_at(m, META_CHECKSUMMED_LEN);
        let computed = fnv1a64(&m[..META_CHECKSUMMED_LEN]);
        if checksum != computed {
            return Err(MetaError::Checksum);
        }
        let page_size = u32_at(m, 8);
        if !(512..=1 << 20).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(MetaError::PageSize(page_size));
        }
        Ok(Meta {
            page_size,
            root: u64_at(m, 16),
            freelist: u64_at(m, 32),
            pgid: u64_at(m, 40),
            txid: u64_at(m, 48),
        })
    }
}

/// The meta page bbolt opens with: the valid one of the two with the higher transaction id;
/// when neither is valid, why the first is not.
pub fn choose_meta(
    meta0: Result<Meta, MetaError>,
    meta1: Result<Meta, MetaError>,
) -> Result<Meta, MetaError> {
    match (meta0, meta1) {
        (Ok(a), Ok(b)) => Ok(if b.txid > a.txid { b } else { a }),
        (Ok(a), Err(_)) => Ok(a),
        (Err(_), Ok(b)) => Ok(b),
        (Err(e), Err(_)) => Err(e),
    }
}

fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

pub struct BranchElem {
    pub pgid: u64,
}

impl BranchElem {
    pub fn parse(page: &[u8], i: usize) -> Option<BranchElem> {
        let at = PAGE_HEADER_SIZE + i * ELEM_SIZE;
        if at + ELEM_SIZE > page.len() {
            return None;
        }
        Some(BranchElem {
            pgid: u64_at(page, at + 8),
        })
    }
}

pub struct LeafElem {
    at: usize,
    pub flags: u32,
    pos: u32,
    ksize: u32,
    vsize: u32,
}

impl LeafElem {
    pub fn parse(page: &[u8], i: usize) -> Option<LeafElem> {
        let at = PAGE_HEADER_SIZE + i * ELEM_SIZE;
        if at + ELEM_SIZE > page.len() {
            return None;
        }
        Some(LeafElem {
            at,
            flags: u32_at(page, at),
            pos: u32_at(page, at + 4),
            ksize: u32_at(page, at + 8),
            vsize: u32_at(page, at + 12),
        })
    }

    /// Key and value, which bbolt stores `pos` bytes after the element itself.
    pub fn key_value<'p>(&self, page: &'p [u8]) -> Option<(&'p [u8], &'p [u8])> {
        let kstart = self.at.checked_add(self.pos as usize)?;
        let kend = kstart.checked_add(self.ksize as usize)?;
        let vend = kend.checked_add(self.vsize as usize)?;
        if vend > page.len() {
            return None;
        }
        Some((&page[kstart..kend], &page[kend..vend]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta_page(page_size: u32, txid: u64) -> Vec<u8> {
        let mut p = vec![0u8; page_size as usize];
        p[8..10].copy_from_slice(&0x04u16.to_le_bytes());
        let m = &mut p[META_OFFSET..];
        m[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        m[4..8].copy_from_slice(&VERSION.to_le_bytes());
        m[8..12].copy_from_slice(&page_size.to_le_bytes());
        m[16..24].copy_from_slice(&3u64.to_le_bytes());
        m[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        m[40..48].copy_from_slice(&5u64.to_le_bytes());
        m[48..56].copy_from_slice(&txid.to_le_bytes());
        let sum = fnv1a64(&m[..META_CHECKSUMMED_LEN]);
        m[56..64].copy_from_slice(&sum.to_le_bytes());
        p
    }

    #[test]
    fn meta_with_unsynced_freelist_is_accepted() {
        let m = Meta::parse(&meta_page(4096, 7)).unwrap();
        assert_eq!((m.page_size, m.root, m.pgid, m.txid), (4096, 3, 5, 7));
        assert_eq!(m.freelist, u64::MAX);
    }

    #[test]
    fn meta_with_a_flipped_bit_fails_its_checksum() {
        let mut p = meta_page(4096, 7);
        p[META_OFFSET + 40] ^= 1;
        assert_eq!(Meta::parse(&p).unwrap_err(), MetaError::Checksum);
    }

    #[test]
    fn fnv1a64_matches_the_reference_vector() {
        // FNV-1a 64 of "a" from the reference test suite.
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
