//! Postfix queue files written by the tests that forge hostile queues (`faults`,
//! `hostile_spool`): the record encoding of Postfix's `rec_put`.

/// One Postfix queue-file record: type, base-128 length, data.
pub fn record(kind: u8, data: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    let mut n = data.len();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        out.push(if n > 0 { byte | 0x80 } else { byte });
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(data);
    out
}
