//! The connection under both clients: the socket (TCP or unix) with one deadline for every
//! read, TLS over it, and [`Conn`], which writes command lines and DATA and reads bounded
//! replies through [`Reply::parse`].

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{Timeouts, WireError};
use crate::deliver::reply::Reply;

/// The socket under a connection: TCP or a unix socket, with one deadline for reads.
///
/// Every read waits at most until the deadline (the socket's read timeout is set to what
/// is left before each read), so a server that answers one byte a second cannot stretch
/// one reply beyond it. TLS reads through this too: rustls may read the socket several
/// times for one record, and each of those reads meets the same deadline.
#[derive(Debug)]
struct Socket {
    raw: RawSocket,
    /// When the reply being read is due; `None`: each read waits `fallback`.
    deadline: Option<Instant>,
    fallback: Duration,
}

#[derive(Debug)]
enum RawSocket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Socket {
    fn set_read_timeout(&self, t: Duration) -> io::Result<()> {
        match &self.raw {
            RawSocket::Tcp(s) => s.set_read_timeout(Some(t)),
            RawSocket::Unix(s) => s.set_read_timeout(Some(t)),
        }
    }

    fn set_write_timeout(&self, t: Duration) -> io::Result<()> {
        match &self.raw {
            RawSocket::Tcp(s) => s.set_write_timeout(Some(t)),
            RawSocket::Unix(s) => s.set_write_timeout(Some(t)),
        }
    }

    fn shutdown(&self) {
        // Best effort: the connection is being given up either way.
        let _ = match &self.raw {
            RawSocket::Tcp(s) => s.shutdown(Shutdown::Both),
            RawSocket::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let wait = match self.deadline {
            Some(deadline) => deadline.saturating_duration_since(Instant::now()),
            None => self.fallback,
        };
        if wait.is_zero() {
            return Err(ErrorKind::TimedOut.into());
        }
        self.set_read_timeout(wait)?;
        match &mut self.raw {
            RawSocket::Tcp(s) => s.read(buf),
            RawSocket::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.raw {
            RawSocket::Tcp(s) => s.write(buf),
            RawSocket::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.raw {
            RawSocket::Tcp(s) => s.flush(),
            RawSocket::Unix(s) => s.flush(),
        }
    }
}

/// The byte stream: the socket itself, or TLS over it (SMTPS, or after STARTTLS).
#[derive(Debug)]
enum Stream {
    Plain(Socket),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, Socket>>),
}

impl Stream {
    fn socket(&mut self) -> &mut Socket {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => &mut t.sock,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(t) => t.flush(),
        }
    }
}

/// One connection: writes command lines and DATA, reads replies through [`Reply::parse`].
#[derive(Debug)]
pub(crate) struct Conn {
    stream: Stream,
    /// Bytes read but not yet parsed (the start of the next reply); never more than one
    /// reply's worth (`MAX_REPLY_OCTETS`) plus one read.
    buf: Vec<u8>,
    timeouts: Timeouts,
}

impl Conn {
    /// Connects over TCP, trying every address `host` resolves to; the error names them.
    pub(crate) fn tcp(host: &str, port: u16, timeouts: Timeouts) -> Result<Conn, String> {
        let addrs: Vec<_> = (host, port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve `{host}`: {e}"))?
            .collect();
        if addrs.is_empty() {
            return Err(format!("`{host}` resolves to no address"));
        }
        let mut tried = Vec::new();
        for addr in &addrs {
            match TcpStream::connect_timeout(addr, timeouts.connect) {
                Ok(s) => {
                    // Without it, the 5-byte DATA terminator waits behind Nagle for the
                    // peer's delayed ACK: 40 ms per message on Linux.
                    s.set_nodelay(true)
                        .map_err(|e| format!("cannot set TCP_NODELAY on {addr}: {e}"))?;
                    return Conn::ready(RawSocket::Tcp(s), timeouts);
                }
                Err(e) => tried.push(format!("{addr}: {e}")),
            }
        }
        Err(format!("cannot connect to {}", tried.join("; ")))
    }

    /// Connects to a unix socket.
    pub(crate) fn unix(path: &Path, timeouts: Timeouts) -> Result<Conn, String> {
        let s = UnixStream::connect(path)
            .map_err(|e| format!("cannot connect to socket `{}`: {e}", path.display()))?;
        Conn::ready(RawSocket::Unix(s), timeouts)
    }

    fn ready(raw: RawSocket, timeouts: Timeouts) -> Result<Conn, String> {
        let socket = Socket {
            raw,
            deadline: None,
            fallback: timeouts.command,
        };
        socket
            .set_write_timeout(timeouts.command)
            .map_err(|e| format!("cannot set a write timeout: {e}"))?;
        Ok(Conn {
            stream: Stream::Plain(socket),
            buf: Vec::new(),
            timeouts,
        })
    }

    /// Starts TLS on this connection (at once for SMTPS, after `220` to STARTTLS) and
    /// completes the handshake within the command timeout.
    pub(crate) fn start_tls(self, host: &str, insecure: bool) -> Result<Conn, String> {
        let Conn {
            stream,
            buf,
            timeouts,
        } = self;
        if !buf.is_empty() {
            // Bytes sent before the handshake would be read as if they came over TLS
            // (the STARTTLS command injection of CVE-2011-0411).
            return Err("the server sent more after its answer to STARTTLS".to_string());
        }
        let Stream::Plain(mut socket) = stream else {
            return Err("TLS is already on".to_string());
        };
        let mut tls = crate::deliver::tls::client(host, insecure)?;
        socket.deadline = Some(Instant::now() + timeouts.command);
        while tls.is_handshaking() {
            if let Err(e) = tls.complete_io(&mut socket) {
                socket.shutdown();
                return Err(match WireError::from_io(e, timeouts.command) {
                    WireError::Timeout(_) => format!(
                        "the TLS handshake took longer than {}",
                        crate::throttle::format_duration(timeouts.command)
                    ),
                    other => format!("the TLS handshake failed: {other}"),
                });
            }
        }
        socket.deadline = None;
        Ok(Conn {
            stream: Stream::Tls(Box::new(rustls::StreamOwned::new(tls, socket))),
            buf,
            timeouts,
        })
    }

    /// True once TLS is on.
    pub(crate) fn is_encrypted(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    /// Reads one reply, all of it within `wait` (one deadline for the reply, not per read),
    /// and at most `MAX_REPLY_OCTETS` of it.
    pub(crate) fn read_reply(&mut self, wait: Duration) -> Result<Reply, WireError> {
        self.stream.socket().deadline = Some(Instant::now() + wait);
        let result = self.read_until_reply(wait);
        self.stream.socket().deadline = None;
        result
    }

    fn read_until_reply(&mut self, wait: Duration) -> Result<Reply, WireError> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some((reply, used)) = Reply::parse(&self.buf).map_err(WireError::Malformed)? {
                self.buf.drain(..used);
                return Ok(reply);
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(WireError::Closed),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(WireError::from_io(e, wait)),
            }
        }
    }

    /// Reads one line (returned without its CRLF or LF) that must arrive by `deadline` and
    /// hold at most `max` octets: IMAP's responses are lines, not SMTP replies. The limit is
    /// checked on what is buffered before every read, so an endless line costs `max` plus one
    /// read of memory.
    pub(crate) fn read_line(
        &mut self,
        deadline: Instant,
        max: usize,
    ) -> Result<Vec<u8>, WireError> {
        self.stream.socket().deadline = Some(deadline);
        let result = self.read_line_inner(max);
        self.stream.socket().deadline = None;
        result
    }

    fn read_line_inner(&mut self, max: usize) -> Result<Vec<u8>, WireError> {
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                if end > max {
                    return Err(too_long(max));
                }
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            if self.buf.len() > max {
                return Err(too_long(max));
            }
            self.fill(&mut chunk)?;
        }
    }

    /// Reads exactly `n` octets (an IMAP literal) by `deadline`.
    pub(crate) fn read_exact(&mut self, n: usize, deadline: Instant) -> Result<Vec<u8>, WireError> {
        self.stream.socket().deadline = Some(deadline);
        let mut chunk = [0u8; 4096];
        let result = loop {
            if self.buf.len() >= n {
                break Ok(self.buf.drain(..n).collect());
            }
            if let Err(e) = self.fill(&mut chunk) {
                break Err(e);
            }
        };
        self.stream.socket().deadline = None;
        result
    }

    fn fill(&mut self, chunk: &mut [u8]) -> Result<(), WireError> {
        loop {
            match self.stream.read(chunk) {
                Ok(0) => return Err(WireError::Closed),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(());
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // The caller knows how long it allowed; the error names the kind only.
                Err(e) => return Err(WireError::from_io(e, self.timeouts.command)),
            }
        }
    }

    /// True when the server sent bytes that nothing asked for yet.
    pub(crate) fn has_buffered(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Reads the greeting (a reply like any other, with the reply timeout); the error says
    /// what went wrong in words an operator can act on.
    pub(crate) fn greeting(&mut self) -> Result<Reply, String> {
        let wait = self.timeouts.command;
        self.read_reply(wait).map_err(|e| match e {
            WireError::Timeout(_) => format!(
                "timed out waiting for the greeting ({}, --reply-timeout)",
                crate::throttle::format_duration(wait)
            ),
            WireError::Closed => "the server closed the connection before its greeting".into(),
            other => format!("no greeting: {other}"),
        })
    }

    /// Sends one command line (CRLF added) and reads its reply.
    pub(crate) fn command(&mut self, line: &str) -> Result<Reply, WireError> {
        self.write_all(format!("{line}\r\n").as_bytes())?;
        self.read_reply(self.timeouts.command)
    }

    /// Sends bytes as they are (already encoded DATA, or its terminator).
    pub(crate) fn write_all(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        let wait = self.timeouts.command;
        self.stream
            .write_all(bytes)
            .and_then(|()| self.stream.flush())
            .map_err(|e| WireError::from_io(e, wait))
    }

    pub(crate) fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// Closes the connection without ceremony (after an error or a 421).
    pub(crate) fn abandon(mut self) {
        self.stream.socket().shutdown();
    }
}

fn too_long(max: usize) -> WireError {
    WireError::Io(io::Error::new(
        ErrorKind::InvalidData,
        format!("response too long: a line of more than {max} octets"),
    ))
}
