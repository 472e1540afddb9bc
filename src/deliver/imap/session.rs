//! One IMAP connection (`Session`): tagged commands and their responses under one deadline,
//! every response line and literal bounded, AUTHENTICATE PLAIN without SASL-IR, APPEND
//! (with LITERAL+ or waiting for the continuation), and the search for a copy by its trace
//! id (EXAMINE, UID SEARCH HEADER, UID FETCH RFC822.SIZE).

use std::fmt;
use std::time::{Duration, Instant};

use super::super::wire::{Conn, Timeouts, WireError};
use super::codec::{Tagged, imap_date, literal_size, parse_status, word};
use crate::sanitize;

/// Longest response line we read (a CAPABILITY line of a big server is ~1 KB).
const MAX_LINE_OCTETS: usize = 64 * 1024;
/// Most untagged responses one command may bring (a hostile server could stream them).
const MAX_UNTAGGED: usize = 10_000;
/// Largest literal inside a response we accept (we never fetch message content).
const MAX_LITERAL_OCTETS: usize = 64 * 1024;

/// One connection, authenticated as one mailbox.
#[derive(Debug)]
pub(super) struct Session {
    pub(super) conn: Conn,
    /// The canonical mailbox this connection is authorized as.
    pub(super) mailbox: String,
    pub(super) literal_plus: bool,
    pub(super) tag: u32,
    /// The server's name (for `Remote-MTA` and events).
    pub(super) server: String,
}

/// How one step of the conversation failed.
#[derive(Debug)]
pub(super) enum Broken {
    /// The connection is unusable (closed, timed out, BYE, nonsense).
    Lost(String),
}

impl fmt::Display for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Broken::Lost(why) => f.write_str(why),
        }
    }
}

pub(super) fn lost(e: &WireError, waited: Duration) -> Broken {
    Broken::Lost(match e {
        WireError::Timeout(_) => format!(
            "no answer within {} (--reply-timeout)",
            crate::throttle::format_duration(waited)
        ),
        other => other.to_string(),
    })
}

impl Session {
    pub(super) fn next_tag(&mut self) -> String {
        self.tag += 1;
        format!("R{}", self.tag)
    }

    /// Sends `line` and reads responses until its tagged answer, all by one deadline;
    /// `untagged` sees each untagged response.
    pub(super) fn command(
        &mut self,
        line: &str,
        wait: Duration,
        untagged: &mut dyn FnMut(&str),
    ) -> Result<Tagged, Broken> {
        let tag = self.next_tag();
        self.conn
            .write_all(format!("{tag} {line}\r\n").as_bytes())
            .map_err(|e| lost(&e, wait))?;
        read_tagged(&mut self.conn, &tag, Instant::now() + wait, wait, untagged)
    }

    /// APPENDs `bytes` to INBOX dated `arrival`, no flags; waits for the continuation
    /// unless the server offers LITERAL+.
    pub(super) fn append(
        &mut self,
        arrival: chrono::DateTime<chrono::FixedOffset>,
        bytes: &[u8],
        timeouts: Timeouts,
    ) -> Appended {
        let tag = self.next_tag();
        let date = imap_date(arrival);
        let plus = if self.literal_plus { "+" } else { "" };
        let line = format!(
            "{tag} APPEND INBOX () \"{date}\" {{{}{plus}}}\r\n",
            bytes.len()
        );
        if let Err(e) = self.conn.write_all(line.as_bytes()) {
            return Appended::LostBefore(lost(&e, timeouts.command).to_string());
        }
        if !self.literal_plus {
            // Wait for the continuation; a tagged answer instead refuses the APPEND.
            let wait = timeouts.command;
            let deadline = Instant::now() + wait;
            loop {
                match read_response(&mut self.conn, deadline, wait) {
                    Ok(l) if l.starts_with('+') => break,
                    Ok(l) if l.starts_with("* ") => {
                        if word(&l, 1).eq_ignore_ascii_case("BYE") {
                            return Appended::LostBefore(format!("the server said `{l}`"));
                        }
                    }
                    Ok(l) => {
                        if let Some(rest) = l.strip_prefix(&tag).and_then(|r| r.strip_prefix(' ')) {
                            return Appended::Answer(parse_status(rest));
                        }
                        return Appended::LostBefore(format!("unexpected response `{l}`"));
                    }
                    Err(e) => return Appended::LostBefore(e.to_string()),
                }
            }
        }
        if let Err(e) = self.conn.write_all(bytes) {
            return Appended::LostBefore(lost(&e, timeouts.command).to_string());
        }
        if let Err(e) = self.conn.write_all(b"\r\n") {
            // Every byte of the message is out; only the command's end is missing. The
            // server cannot have stored it without the CRLF, but be careful anyway.
            return Appended::LostAfter(lost(&e, timeouts.command).to_string());
        }
        let wait = timeouts.data_end;
        match read_tagged(
            &mut self.conn,
            &tag,
            Instant::now() + wait,
            wait,
            &mut |_| {},
        ) {
            Ok(t) => Appended::Answer(t),
            Err(e) => Appended::LostAfter(e.to_string()),
        }
    }

    /// Looks for our copy (its trace id in a `Received:` field, then its size).
    pub(super) fn find_copy(
        &mut self,
        id: &str,
        mailbox: &str,
        size: Option<usize>,
        wait: Duration,
    ) -> Result<Option<String>, Broken> {
        let examined = self.command("EXAMINE INBOX", wait, &mut |_| {})?;
        if !examined.ok() {
            // No INBOX yet: no copy in it.
            return Ok(None);
        }
        let mut uids = Vec::new();
        let searched = self.command(
            &format!("UID SEARCH HEADER Received \"{id}\""),
            wait,
            &mut |u| {
                if word(u, 0).eq_ignore_ascii_case("SEARCH") {
                    uids.extend(u.split(' ').skip(1).filter_map(|w| w.parse::<u32>().ok()));
                }
            },
        )?;
        if !searched.ok() {
            return Err(Broken::Lost(format!(
                "SEARCH answered `{}`",
                searched.line()
            )));
        }
        let mut found = None;
        for uid in uids {
            let mut got = None;
            let fetched =
                self.command(&format!("UID FETCH {uid} RFC822.SIZE"), wait, &mut |u| {
                    let upper = u.to_ascii_uppercase();
                    if let Some(at) = upper.find("RFC822.SIZE ") {
                        got = u[at + 12..]
                            .split([' ', ')'])
                            .next()
                            .and_then(|n| n.parse::<usize>().ok());
                    }
                })?;
            if fetched.ok() && got.is_some() && (size.is_none() || got == size) {
                found = Some(uid);
                break;
            }
        }
        // Leave the mailbox selected state: APPEND works in either state.
        let _ = self.command("UNSELECT", wait, &mut |_| {});
        Ok(found.map(|uid| {
            format!(
                "verified in the store: mailbox {} INBOX has this copy already (UID {uid}, \
                 trace id {id})",
                sanitize::for_terminal(mailbox)
            )
        }))
    }
}

/// How an APPEND ended.
pub(super) enum Appended {
    Answer(Tagged),
    /// Nothing or not all of the message reached the server.
    LostBefore(String),
    /// All of it did; the answer did not come.
    LostAfter(String),
}

/// Reads responses until the one tagged `tag`. A `BYE` is the server going away.
pub(super) fn read_tagged(
    conn: &mut Conn,
    tag: &str,
    deadline: Instant,
    wait: Duration,
    untagged: &mut dyn FnMut(&str),
) -> Result<Tagged, Broken> {
    for _ in 0..MAX_UNTAGGED {
        let line = read_response(conn, deadline, wait)?;
        if let Some(rest) = line.strip_prefix("* ") {
            if word(rest, 0).eq_ignore_ascii_case("BYE") {
                return Err(Broken::Lost(format!(
                    "the server said `{}`",
                    sanitize::for_terminal(&line)
                )));
            }
            untagged(rest);
            continue;
        }
        if line.starts_with('+') {
            return Err(Broken::Lost(
                "the server asked for more than the command".into(),
            ));
        }
        if let Some(rest) = line.strip_prefix(tag).and_then(|r| r.strip_prefix(' ')) {
            return Ok(parse_status(rest));
        }
        return Err(Broken::Lost(format!(
            "unexpected response `{}`",
            sanitize::for_terminal(&line)
        )));
    }
    Err(Broken::Lost(format!(
        "more than {MAX_UNTAGGED} untagged responses to one command"
    )))
}

/// One response: a line, with any literals (`{n}` at a line's end) read and replaced by
/// a placeholder, so the text stays one line. Bounded by `MAX_LINE_OCTETS` per line and
/// `MAX_LITERAL_OCTETS` per literal.
pub(super) fn read_response(
    conn: &mut Conn,
    deadline: Instant,
    wait: Duration,
) -> Result<String, Broken> {
    let mut text = String::new();
    loop {
        let line = conn
            .read_line(deadline, MAX_LINE_OCTETS)
            .map_err(|e| lost(&e, wait))?;
        let line = String::from_utf8_lossy(&line).into_owned();
        match literal_size(&line) {
            Some(n) if n > MAX_LITERAL_OCTETS => {
                return Err(Broken::Lost(format!(
                    "a literal of {n} octets in a response (at most {MAX_LITERAL_OCTETS})"
                )));
            }
            Some(n) => {
                conn.read_exact(n, deadline).map_err(|e| lost(&e, wait))?;
                text.push_str(&line);
                if text.len() > MAX_LINE_OCTETS {
                    return Err(Broken::Lost("a response of too many literals".into()));
                }
            }
            None => {
                text.push_str(&line);
                return Ok(text);
            }
        }
    }
}

pub(super) fn authenticate_in_two_steps(
    session: &mut Session,
    plain: &str,
    wait: Duration,
) -> Result<Tagged, Broken> {
    let tag = session.next_tag();
    session
        .conn
        .write_all(format!("{tag} AUTHENTICATE PLAIN\r\n").as_bytes())
        .map_err(|e| lost(&e, wait))?;
    let deadline = Instant::now() + wait;
    let line = read_response(&mut session.conn, deadline, wait)?;
    if let Some(rest) = line.strip_prefix(&tag).and_then(|r| r.strip_prefix(' ')) {
        return Ok(parse_status(rest));
    }
    if !line.starts_with('+') {
        return Err(Broken::Lost(format!(
            "unexpected response `{}`",
            sanitize::for_terminal(&line)
        )));
    }
    session
        .conn
        .write_all(format!("{plain}\r\n").as_bytes())
        .map_err(|e| lost(&e, wait))?;
    read_tagged(&mut session.conn, &tag, deadline, wait, &mut |_| {})
}
