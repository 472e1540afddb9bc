//! Pure: `--shard I/N`, the split of one big spool across several processes or hosts.
//!
//! Every spool item has a key known before its file is read (see each reader); the item
//! belongs to shard `1 + (u64 of the first 8 bytes of SHA-256(key), big-endian) mod N`.
//! SHA-256 is fixed by its standard, so the same key lands in the same shard on every
//! machine and in every version (std's `DefaultHasher` promises neither). Items without a
//! key (a folder that cannot be listed) belong to shard 1, so each is quarantined once.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// One shard of `count`: `index` is 1-based, `1 <= index <= count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShardSpec {
    index: u32,
    count: u32,
}

impl ShardSpec {
    pub fn new(index: u32, count: u32) -> Result<ShardSpec, String> {
        if count == 0 {
            return Err(format!(
                "`{index}/{count}`: the number of shards must be at least 1"
            ));
        }
        if index == 0 || index > count {
            return Err(format!(
                "`{index}/{count}`: the shard must be between 1 and {count}"
            ));
        }
        Ok(ShardSpec { index, count })
    }

    pub fn index(self) -> u32 {
        self.index
    }

    pub fn count(self) -> u32 {
        self.count
    }

    /// Whether the item with `key` belongs to this shard.
    pub fn owns(self, key: &str) -> bool {
        shard_of(key, self.count) == self.index
    }

    /// Whether items without a key (a folder that cannot be listed) belong here: shard 1
    /// owns them, so each is quarantined exactly once across the shards.
    pub fn owns_keyless(self) -> bool {
        self.index == 1
    }
}

/// The 1-based shard of `key` among `count` (`count` >= 1).
pub fn shard_of(key: &str, count: u32) -> u32 {
    let digest = Sha256::digest(key.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let n = u64::from_be_bytes(first) % u64::from(count.max(1));
    // `n < count <= u32::MAX`, so the cast is exact.
    n as u32 + 1
}

impl fmt::Display for ShardSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for ShardSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<ShardSpec, String> {
        let shape = || format!("`{s}` is not a shard like 2/8 (shard 2 of 8)");
        let (i, n) = s.trim().split_once('/').ok_or_else(shape)?;
        let parse = |part: &str| part.trim().parse::<u32>().map_err(|_| shape());
        ShardSpec::new(parse(i)?, parse(n)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_round_trip() {
        let spec: ShardSpec = "2/3".parse().unwrap();
        assert_eq!((spec.index(), spec.count()), (2, 3));
        assert_eq!(spec.to_string(), "2/3");
        assert_eq!("1/1".parse::<ShardSpec>().unwrap().to_string(), "1/1");
        assert_eq!(" 3 / 3 ".parse::<ShardSpec>().unwrap().to_string(), "3/3");
    }

    #[test]
    fn bad_specs_are_refused_with_a_reason() {
        let err = |s: &str| s.parse::<ShardSpec>().err().unwrap_or_default();
        assert!(err("0/3").contains("between 1 and 3"), "{}", err("0/3"));
        assert!(err("4/3").contains("between 1 and 3"), "{}", err("4/3"));
        assert!(err("1/0").contains("at least 1"), "{}", err("1/0"));
        for garbage in ["", "3", "a/b", "1/3/5", "-1/3", "1.5/3", "1/"] {
            assert!(
                err(garbage).contains("is not a shard"),
                "{garbage}: {}",
                err(garbage)
            );
        }
    }

    /// Pinned: a change of the hash (or of its byte order) moves messages between shards
    /// of a spool already half ingested, so it must break this test.
    #[test]
    fn keys_land_in_pinned_shards() {
        let pinned = [
            ("0D21CC4250", 3, 3),
            ("1674468000.M1P2.host", 3, 1),
            ("0001-invoice", 3, 2),
            ("#39", 3, 3),
            ("1pJ3Yk-0003Jk-6R", 8, 3),
        ];
        for (key, count, shard) in pinned {
            assert_eq!(shard_of(key, count), shard, "{key} of {count}");
        }
    }

    #[test]
    fn one_shard_owns_everything_and_ownership_is_exclusive() {
        let one = ShardSpec::new(1, 1).unwrap();
        assert!(one.owns("anything") && one.owns_keyless());
        for key in ["a", "b", "c", "queue/0001", "#0"] {
            let owners = (1..=5)
                .filter(|i| ShardSpec::new(*i, 5).unwrap().owns(key))
                .count();
            assert_eq!(owners, 1, "{key}");
        }
        assert!(!ShardSpec::new(2, 5).unwrap().owns_keyless());
    }
}
