//! A scripted SMTP server on 127.0.0.1:0, in threads of the test process: it advertises
//! the extensions a test chooses, records every transaction (MAIL line, RCPT lines, the
//! data as received) and answers as the test's `Script` says (a 452 for one recipient, a
//! 421 after N messages, no reply after the final dot, a greeting that never comes, going
//! away after N messages) or as a hostile store would (a reply that is not UTF-8, dripped
//! a byte at a time, or a line that never ends). Deterministic: no timing of its own except
//! the accept poll and the drips and waits a test asks for.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The name the peer greets with (so the DSNs' `Remote-MTA`).
pub const PEER_NAME: &str = "peer.example.test";

/// What to do after the final dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dot {
    /// `250 2.0.0 Ok: queued`.
    Accept,
    /// This reply instead (a 4xx or 5xx; a 421 also closes the connection).
    Reply(String),
    /// Close the connection without a reply (the message may or may not be delivered).
    Cut,
    /// These bytes exactly (a reply that is not UTF-8), CRLF included.
    Raw(Vec<u8>),
    /// This reply (CRLF added) one byte at a time, this long apart: each read of the
    /// client gets a byte in time, the reply as a whole is late.
    Drip(String, Duration),
    /// Wait this long, then `250`: a store slow to store the message.
    Slow(Duration),
    /// `x` without a line end until the client hangs up (at most 256 MiB): a reply line
    /// that never ends.
    Endless,
}

type MailHook = dyn Fn(u64) -> Option<String> + Send + Sync;
type RcptHook = dyn Fn(u64, &str) -> Option<String> + Send + Sync;
type DotHook = dyn Fn(u64, &Transaction) -> Dot + Send + Sync;

/// How the peer behaves. Counters are 1-based and count over all connections.
pub struct Script {
    /// EHLO keywords after the greeting line (`8BITMIME`, `DSN`, …).
    pub extensions: Vec<String>,
    /// Accept connections but never send the greeting.
    pub stall_greeting: bool,
    /// A reply to the Nth MAIL FROM instead of 250 (a 421 also closes the connection).
    pub on_mail: Box<MailHook>,
    /// A reply to the Nth RCPT TO (of any transaction) for this address instead of 250.
    pub on_rcpt: Box<RcptHook>,
    /// What to do after the final dot of the Nth DATA.
    pub on_dot: Box<DotHook>,
    /// After this many accepted messages, close every connection and stop listening.
    pub down_after: Option<u64>,
}

impl Script {
    /// Accepts everything, advertising `extensions`.
    pub fn accepting(extensions: &[&str]) -> Script {
        Script {
            extensions: extensions.iter().map(|s| s.to_string()).collect(),
            stall_greeting: false,
            on_mail: Box::new(|_| None),
            on_rcpt: Box::new(|_, _| None),
            on_dot: Box::new(|_, _| Dot::Accept),
            down_after: None,
        }
    }
}

/// One mail transaction as the peer saw it.
#[derive(Debug, Clone, Default)]
pub struct Transaction {
    /// The connection it came on (1-based).
    pub connection: u64,
    /// `MAIL FROM:<…> PARAMS` as sent.
    pub mail: String,
    /// Every `RCPT TO:<…> PARAMS` line, with the peer's reply code.
    pub rcpts: Vec<(String, u16)>,
    /// The message as received: dot-unstuffed, CRLF line ends, without the final dot.
    pub data: Vec<u8>,
    /// The peer's reply code after the final dot (`None`: cut, or no DATA).
    pub result: Option<u16>,
}

impl Transaction {
    /// The addresses of the accepted RCPTs (without angle brackets or parameters).
    pub fn accepted(&self) -> Vec<String> {
        self.rcpts
            .iter()
            .filter(|(_, code)| *code == 250)
            .map(|(line, _)| rcpt_address(line))
            .collect()
    }

    /// True when the message went in completely and the peer said 250.
    pub fn delivered(&self) -> bool {
        self.result == Some(250)
    }

    pub fn contains(&self, needle: &str) -> bool {
        self.data
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    }
}

/// The address inside `RCPT TO:<…>`.
pub fn rcpt_address(line: &str) -> String {
    line.split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(a, _)| a.to_string())
        .unwrap_or_default()
}

struct Shared {
    script: Script,
    log: Mutex<Vec<Transaction>>,
    mails: AtomicU64,
    rcpts: AtomicU64,
    datas: AtomicU64,
    accepted: AtomicU64,
    connections: AtomicU64,
    /// Set by `down_after`: refuse everything from now on.
    down: AtomicBool,
    /// Set on drop: the accept loop ends.
    stop: AtomicBool,
}

/// A running peer; stops listening when dropped.
pub struct Peer {
    pub port: u16,
    shared: Arc<Shared>,
}

impl Peer {
    pub fn start(script: Script) -> Peer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the peer");
        listener.set_nonblocking(true).expect("nonblocking accept");
        let port = listener.local_addr().expect("peer address").port();
        let shared = Arc::new(Shared {
            script,
            log: Mutex::new(Vec::new()),
            mails: AtomicU64::new(0),
            rcpts: AtomicU64::new(0),
            datas: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            down: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        let s = Arc::clone(&shared);
        std::thread::spawn(move || accept_loop(listener, s));
        Peer { port, shared }
    }

    /// `smtp://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Every transaction so far (including refused and cut ones).
    pub fn transactions(&self) -> Vec<Transaction> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The transactions the peer accepted (250 after the final dot).
    pub fn delivered(&self) -> Vec<Transaction> {
        self.transactions()
            .into_iter()
            .filter(Transaction::delivered)
            .collect()
    }

    /// How many accepted copies of the message with `needle` (a Message-ID) went to
    /// `address` (compared without case).
    pub fn copies(&self, needle: &str, address: &str) -> usize {
        self.delivered()
            .iter()
            .filter(|t| t.contains(needle))
            .map(|t| {
                t.accepted()
                    .iter()
                    .filter(|a| a.eq_ignore_ascii_case(address))
                    .count()
            })
            .sum()
    }

    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        if shared.stop.load(Ordering::SeqCst) || shared.down.load(Ordering::SeqCst) {
            return; // dropping the listener: connections are refused from now on
        }
        match listener.accept() {
            Ok((stream, _)) => {
                let n = shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
                let s = Arc::clone(&shared);
                std::thread::spawn(move || {
                    let _ = session(stream, n, &s);
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return,
        }
    }
}

/// One client connection; `Err` when the client went away.
fn session(stream: TcpStream, connection: u64, shared: &Shared) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    // The client is our own binary: it never idles this long unless a test broke.
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let script = &shared.script;
    if script.stall_greeting {
        // Read (and drop) until the client gives up.
        let mut sink = Vec::new();
        while reader.read_until(b'\n', &mut sink)? > 0 {
            sink.clear();
        }
        return Ok(());
    }
    // One write per reply, without Nagle: a reply split over two segments waits for the
    // client's delayed ACK (40 ms a command).
    out.set_nodelay(true)?;
    let send = |out: &mut TcpStream, text: &str| -> std::io::Result<()> {
        out.write_all(format!("{text}\r\n").as_bytes())?;
        out.flush()
    };
    send(&mut out, &format!("220 {PEER_NAME} ESMTP scripted peer"))?;
    let mut tx: Option<Transaction> = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || shared.down.load(Ordering::SeqCst) {
            return Ok(());
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        let verb = line
            .split([' ', ':'])
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" => send(&mut out, &ehlo_reply(&script.extensions))?,
            "HELO" => send(&mut out, &format!("250 {PEER_NAME}"))?,
            "RSET" => {
                tx = None;
                send(&mut out, "250 2.0.0 Ok")?
            }
            "NOOP" => send(&mut out, "250 2.0.0 Ok")?,
            "QUIT" => {
                send(&mut out, "221 2.0.0 Bye")?;
                return Ok(());
            }
            "MAIL" => {
                let n = shared.mails.fetch_add(1, Ordering::SeqCst) + 1;
                match (script.on_mail)(n) {
                    Some(reply) => {
                        send(&mut out, &reply)?;
                        if reply.starts_with("421") {
                            return Ok(());
                        }
                    }
                    None => {
                        tx = Some(Transaction {
                            connection,
                            mail: line.clone(),
                            ..Transaction::default()
                        });
                        send(&mut out, "250 2.1.0 Ok")?;
                    }
                }
            }
            "RCPT" => {
                let Some(t) = tx.as_mut() else {
                    send(&mut out, "503 5.5.1 Error: need MAIL command")?;
                    continue;
                };
                let n = shared.rcpts.fetch_add(1, Ordering::SeqCst) + 1;
                let address = rcpt_address(&line);
                let reply = (script.on_rcpt)(n, &address).unwrap_or_else(|| "250 2.1.5 Ok".into());
                let code: u16 = reply.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
                t.rcpts.push((line.clone(), code));
                send(&mut out, &reply)?;
                if code == 421 {
                    log(shared, tx.take());
                    return Ok(());
                }
            }
            "DATA" => {
                let Some(mut t) = tx.take() else {
                    send(&mut out, "503 5.5.1 Error: need MAIL command")?;
                    continue;
                };
                if t.accepted().is_empty() {
                    send(&mut out, "554 5.5.1 Error: no valid recipients")?;
                    log(shared, Some(t));
                    continue;
                }
                send(&mut out, "354 End data with <CR><LF>.<CR><LF>")?;
                t.data = read_data(&mut reader)?;
                let n = shared.datas.fetch_add(1, Ordering::SeqCst) + 1;
                match (script.on_dot)(n, &t) {
                    Dot::Accept => {
                        t.result = Some(250);
                        log(shared, Some(t));
                        send(&mut out, &format!("250 2.0.0 Ok: queued as Q{n}"))?;
                        let accepted = shared.accepted.fetch_add(1, Ordering::SeqCst) + 1;
                        if script.down_after.is_some_and(|d| accepted >= d) {
                            shared.down.store(true, Ordering::SeqCst);
                            return Ok(());
                        }
                    }
                    Dot::Reply(reply) => {
                        t.result = reply.get(..3).and_then(|c| c.parse().ok());
                        log(shared, Some(t));
                        send(&mut out, &reply)?;
                        if reply.starts_with("421") {
                            return Ok(());
                        }
                    }
                    Dot::Cut => {
                        log(shared, Some(t));
                        return Ok(());
                    }
                    Dot::Raw(bytes) => {
                        t.result = std::str::from_utf8(bytes.get(..3).unwrap_or(b""))
                            .ok()
                            .and_then(|c| c.parse().ok());
                        log(shared, Some(t));
                        out.write_all(&bytes)?;
                    }
                    Dot::Drip(reply, gap) => {
                        log(shared, Some(t));
                        for b in format!("{reply}\r\n").bytes() {
                            out.write_all(&[b])?;
                            std::thread::sleep(gap);
                        }
                    }
                    Dot::Slow(wait) => {
                        std::thread::sleep(wait);
                        t.result = Some(250);
                        log(shared, Some(t));
                        send(&mut out, &format!("250 2.0.0 Ok: queued as Q{n}"))?;
                    }
                    Dot::Endless => {
                        log(shared, Some(t));
                        let chunk = [b'x'; 64 * 1024];
                        for _ in 0..4096 {
                            out.write_all(&chunk)?;
                        }
                        return Ok(());
                    }
                }
            }
            _ => send(&mut out, "502 5.5.2 Error: command not recognized")?,
        }
    }
}

fn log(shared: &Shared, tx: Option<Transaction>) {
    if let Some(t) = tx {
        shared.log.lock().unwrap_or_else(|e| e.into_inner()).push(t);
    }
}

fn ehlo_reply(extensions: &[String]) -> String {
    let mut lines = vec![PEER_NAME.to_string()];
    lines.extend(extensions.iter().cloned());
    let last = lines.len() - 1;
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| format!("250{}{l}", if i == last { ' ' } else { '-' }))
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// Lines up to `.` CRLF, dot-unstuffed.
fn read_data(reader: &mut BufReader<TcpStream>) -> std::io::Result<Vec<u8>> {
    let mut data = Vec::new();
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == b".\r\n" || line == b".\n" {
            return Ok(data);
        }
        let unstuffed = if line.starts_with(b".") {
            &line[1..]
        } else {
            &line[..]
        };
        data.extend_from_slice(unstuffed);
    }
}
