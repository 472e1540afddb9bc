//! Postfix queue-file records: one type byte, a base-128 little-endian length, the data.
//!
//! `RecordReader` walks the records of one file in logical order: it follows pointer
//! (`p`) records itself, so callers never see them, and refuses pointer loops. Data is
//! appended straight into the caller's buffer, so a message body is copied once.

use std::collections::HashSet;
use std::io::{self, Read, Seek, SeekFrom};

/// Pointer record: its data is a decimal file offset to continue at (0 = unused).
pub(super) const POINTER: u8 = b'p';

/// The longest length prefix Postfix reads (`rec_get_raw` stops at 32 bits of shift).
const MAX_LENGTH_BYTES: u32 = 5;

/// A pointer's data is a `%15ld` number; anything much longer is not a pointer.
const MAX_POINTER_LEN: u64 = 64;

/// The start of one record whose data has not been read yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RecordHead {
    pub kind: u8,
    /// File offset of the type byte.
    pub offset: u64,
    pub len: u64,
}

/// Why a file cannot be read as records. The text names the byte offset where it applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

impl Malformed {
    pub fn io(offset: u64, e: &io::Error) -> Malformed {
        Malformed(format!("cannot read queue file at offset {offset}: {e}"))
    }
}

/// Reads records from a seekable queue file of known length.
pub(super) struct RecordReader<R> {
    inner: R,
    /// Offset of the next unread byte.
    pos: u64,
    file_len: u64,
    /// Targets of the pointers followed so far: a second jump to one is a loop.
    jumped_to: HashSet<u64>,
}

impl<R: Read + Seek> RecordReader<R> {
    pub(super) fn new(inner: R, file_len: u64) -> RecordReader<R> {
        RecordReader {
            inner,
            pos: 0,
            file_len,
            jumped_to: HashSet::new(),
        }
    }

    /// The next record in logical order (pointers followed), or `None` at the end of the
    /// file on a record boundary. Its data must be taken with `read_data` or `skip_data`
    /// before the next call.
    pub(super) fn next_head(&mut self) -> Result<Option<RecordHead>, Malformed> {
        loop {
            let Some(head) = self.raw_head()? else {
                return Ok(None);
            };
            if head.kind != POINTER {
                return Ok(Some(head));
            }
            self.follow_pointer(head)?;
        }
    }

    /// The type byte of the next record in file order, without consuming it (`None` at EOF).
    pub(super) fn peek_kind(&mut self) -> Result<Option<u8>, Malformed> {
        let Some(kind) = self.byte()? else {
            return Ok(None);
        };
        self.inner
            .seek_relative(-1)
            .map_err(|e| Malformed::io(self.pos, &e))?;
        self.pos -= 1;
        Ok(Some(kind))
    }

    /// Appends the current record's data to `out`.
    pub(super) fn read_data(
        &mut self,
        head: RecordHead,
        out: &mut Vec<u8>,
    ) -> Result<(), Malformed> {
        let start = out.len();
        let want = usize::try_from(head.len).map_err(|_| too_long(head))?;
        out.try_reserve(want).map_err(|_| too_long(head))?;
        let got = (&mut self.inner)
            .take(head.len)
            .read_to_end(out)
            .map_err(|e| Malformed::io(self.pos, &e))?;
        self.pos += got as u64;
        if got < want {
            out.truncate(start);
            return Err(past_end(head, self.file_len));
        }
        Ok(())
    }

    /// Passes over the current record's data.
    pub(super) fn skip_data(&mut self, head: RecordHead) -> Result<(), Malformed> {
        let skip = i64::try_from(head.len).map_err(|_| too_long(head))?;
        self.inner
            .seek_relative(skip)
            .map_err(|e| Malformed::io(self.pos, &e))?;
        self.pos += head.len;
        Ok(())
    }

    /// Reads one type byte and length, checking the data fits in the file.
    fn raw_head(&mut self) -> Result<Option<RecordHead>, Malformed> {
        let offset = self.pos;
        let Some(kind) = self.byte()? else {
            return Ok(None);
        };
        let mut len: u64 = 0;
        let mut count = 0;
        loop {
            let Some(b) = self.byte()? else {
                return Err(Malformed(format!(
                    "truncated: the record at offset {offset} ends inside its length"
                )));
            };
            if count == MAX_LENGTH_BYTES {
                return Err(Malformed(format!(
                    "record length at offset {offset} overflows (more than {MAX_LENGTH_BYTES} length bytes)"
                )));
            }
            len |= u64::from(b & 0x7f) << (7 * count);
            count += 1;
            if b & 0x80 == 0 {
                break;
            }
        }
        let head = RecordHead { kind, offset, len };
        if len > self.file_len.saturating_sub(self.pos) {
            return Err(past_end(head, self.file_len));
        }
        Ok(Some(head))
    }

    fn follow_pointer(&mut self, head: RecordHead) -> Result<(), Malformed> {
        if head.len > MAX_POINTER_LEN {
            return Err(Malformed(format!(
                "pointer record at offset {} is {} bytes long",
                head.offset, head.len
            )));
        }
        let mut data = Vec::with_capacity(16);
        self.read_data(head, &mut data)?;
        let target: u64 = std::str::from_utf8(&data)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| {
                Malformed(format!(
                    "pointer record at offset {} does not hold a file offset",
                    head.offset
                ))
            })?;
        if target == 0 {
            // A reserved slot cleanup left for a milter that changed nothing here.
            return Ok(());
        }
        if target >= self.file_len {
            return Err(Malformed(format!(
                "pointer at offset {} points past the end of the file (to {target}, file is {} bytes)",
                head.offset, self.file_len
            )));
        }
        if !self.jumped_to.insert(target) {
            return Err(Malformed(format!("pointer loop at offset {}", head.offset)));
        }
        self.inner
            .seek(SeekFrom::Start(target))
            .map_err(|e| Malformed::io(head.offset, &e))?;
        self.pos = target;
        Ok(())
    }

    fn byte(&mut self) -> Result<Option<u8>, Malformed> {
        let mut b = [0u8; 1];
        loop {
            match self.inner.read(&mut b) {
                Ok(0) => return Ok(None),
                Ok(_) => {
                    self.pos += 1;
                    return Ok(Some(b[0]));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Malformed::io(self.pos, &e)),
            }
        }
    }
}

fn past_end(head: RecordHead, file_len: u64) -> Malformed {
    Malformed(format!(
        "record at offset {} claims {} bytes, past the end of the file ({file_len} bytes)",
        head.offset, head.len
    ))
}

fn too_long(head: RecordHead) -> Malformed {
    Malformed(format!(
        "record at offset {} is too long to hold in memory ({} bytes)",
        head.offset, head.len
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// Encodes one record as Postfix's `rec_put` does.
    pub(crate) fn record(kind: u8, data: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        let mut len = data.len();
        loop {
            let low = (len & 0x7f) as u8;
            len >>= 7;
            if len == 0 {
                out.push(low);
                break;
            }
            out.push(low | 0x80);
        }
        out.extend_from_slice(data);
        out
    }

    fn all(bytes: &[u8]) -> Result<Vec<(u8, Vec<u8>)>, Malformed> {
        let mut reader = RecordReader::new(Cursor::new(bytes), bytes.len() as u64);
        let mut out = Vec::new();
        while let Some(head) = reader.next_head()? {
            let mut data = Vec::new();
            reader.read_data(head, &mut data)?;
            out.push((head.kind, data));
            if head.kind == b'E' {
                break;
            }
        }
        Ok(out)
    }

    #[test]
    fn lengths_are_little_endian_base_128() {
        let long = vec![b'a'; 300];
        let bytes = record(b'N', &long);
        assert_eq!(&bytes[..3], &[b'N', 0xac, 0x02]);
        assert_eq!(all(&bytes).unwrap(), vec![(b'N', long)]);
    }

    #[test]
    fn pointers_are_followed_and_zero_pointers_ignored() {
        // N "a" | p -> heap | (garbage) | N "c" | E | heap: N "b", p -> N "c"
        let mut bytes = record(b'N', b"a");
        let ptr_at = bytes.len();
        bytes.extend(record(b'p', format!("{:15}", 0).as_bytes()));
        let resume = bytes.len();
        bytes.extend(record(b'N', b"c"));
        bytes.extend(record(b'E', b""));
        let heap = bytes.len();
        bytes.extend(record(b'N', b"b"));
        bytes.extend(record(b'p', format!("{resume:15}").as_bytes()));
        let forward = record(b'p', format!("{heap:15}").as_bytes());
        bytes[ptr_at..ptr_at + forward.len()].copy_from_slice(&forward);
        let kinds: Vec<_> = all(&bytes).unwrap().into_iter().map(|(_, d)| d).collect();
        assert_eq!(
            kinds,
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec(), vec![]]
        );

        let zero = [record(b'p', b"              0"), record(b'E', b"")].concat();
        assert_eq!(all(&zero).unwrap(), vec![(b'E', vec![])]);
    }

    #[test]
    fn bad_framing_names_the_offset() {
        let looped = [record(b'N', b"x"), record(b'p', b"              3")].concat();
        assert_eq!(
            all(&looped).unwrap_err().0,
            "pointer loop at offset 3",
            "a pointer back into itself"
        );
        assert!(all(&[b'N', 0x80]).unwrap_err().0.contains("offset 0"));
        let overflow = [b'N', 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        assert!(all(&overflow).unwrap_err().0.contains("overflows"));
        let past = [b'N', 0x05, b'a'];
        assert_eq!(
            all(&past).unwrap_err().0,
            "record at offset 0 claims 5 bytes, past the end of the file (3 bytes)"
        );
        let far = record(b'p', b"         999999");
        assert!(all(&far).unwrap_err().0.contains("points past the end"));
    }
}
