//! A scripted SMTP/LMTP peer on `127.0.0.1:0` for unit tests: a thread plays one script per
//! accepted connection and records every line the client sent. Besides well-behaved
//! answers it plays the hostile ones: raw bytes (not UTF-8), a reply dripped one byte at a
//! time, a line that never ends, and TLS (STARTTLS or SMTPS) with the self-signed
//! `fixtures/tls/peer.crt`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;

use super::Answer;
use super::reply::Reply;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// One step of a conversation.
#[derive(Debug, Clone)]
pub(crate) enum Step {
    /// Send these bytes (`\n` is turned into CRLF).
    Send(&'static str),
    /// Read one line; it must start with this (case-sensitive).
    Expect(&'static str),
    /// Read DATA lines up to the lone `.`; they are recorded as `DATA:<line>`.
    Data,
    /// Wait before the next step (to stall a client into its timeout).
    Sleep(Duration),
    /// Wait until the client closes (or 5 s pass), to see it gave up.
    AwaitClose,
    /// Send these bytes exactly (no CRLF translation): replies that are not UTF-8.
    SendRaw(&'static [u8]),
    /// Send the text (`\n` turned into CRLF) one byte at a time, this long apart.
    Drip(&'static str, Duration),
    /// Send `x` without a line end until the client closes (at most 64 MiB): a reply line
    /// that never ends. Records how many bytes went out as `ENDLESS:<n>`.
    Endless,
    /// Start TLS as the server, with `fixtures/tls/peer.crt` (after a `220` to STARTTLS,
    /// or first thing for SMTPS).
    StartTls,
}

/// The peer's side of the connection: the socket, or TLS over it.
trait Duplex: Read + Write + Send {}
impl<T: Read + Write + Send> Duplex for T {}

pub(crate) struct Peer {
    pub(crate) port: u16,
    handle: JoinHandle<Result<Vec<String>, String>>,
}

impl Peer {
    /// Plays `scripts[i]` on the i-th accepted connection; then stops accepting.
    pub(crate) fn spawn(scripts: Vec<Vec<Step>>) -> Peer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().expect("local address").port();
        let handle = thread::spawn(move || {
            let mut transcript = Vec::new();
            for (n, script) in scripts.into_iter().enumerate() {
                let (stream, _) = listener.accept().map_err(|e| e.to_string())?;
                transcript.push(format!("--- connection {}", n + 1));
                play(stream, &script, &mut transcript)
                    .map_err(|e| format!("{e}\ntranscript:\n{}", transcript.join("\n")))?;
            }
            Ok(transcript)
        });
        Peer { port, handle }
    }

    /// The lines the client sent; fails the test if the client strayed from the script.
    #[track_caller]
    pub(crate) fn transcript(self) -> Vec<String> {
        match self.handle.join() {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => panic!("scripted peer: {e}"),
            Err(_) => panic!("scripted peer panicked"),
        }
    }
}

fn play(stream: TcpStream, script: &[Step], transcript: &mut Vec<String>) -> Result<(), String> {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let raw = stream.try_clone().map_err(|e| e.to_string())?;
    let mut reader: BufReader<Box<dyn Duplex>> = BufReader::new(Box::new(stream));
    for step in script {
        match step {
            Step::Send(text) => {
                let bytes = text.replace('\n', "\r\n");
                // The client may already have gone (that is what some tests check).
                let _ = send(&mut reader, bytes.as_bytes());
            }
            Step::SendRaw(bytes) => {
                let _ = send(&mut reader, bytes);
            }
            Step::Drip(text, gap) => {
                for b in text.replace('\n', "\r\n").bytes() {
                    if send(&mut reader, &[b]).is_err() {
                        transcript.push("(client closed during the drip)".to_string());
                        break;
                    }
                    thread::sleep(*gap);
                }
            }
            Step::Endless => {
                let chunk = [b'x'; 64 * 1024];
                let mut sent = 0usize;
                while sent < 64 << 20 && send(&mut reader, &chunk).is_ok() {
                    sent += chunk.len();
                }
                transcript.push(format!("ENDLESS:{sent}"));
            }
            Step::StartTls => {
                let config = server_config()?;
                let tls = rustls::ServerConnection::new(config).map_err(|e| e.to_string())?;
                let sock = raw.try_clone().map_err(|e| e.to_string())?;
                reader = BufReader::new(Box::new(rustls::StreamOwned::new(tls, sock)));
            }
            Step::Expect(prefix) => {
                let line = read_line(&mut reader)?;
                transcript.push(line.clone());
                if !line.starts_with(prefix) {
                    return Err(format!("expected `{prefix}…`, got `{line}`"));
                }
            }
            Step::Data => loop {
                let line = read_line(&mut reader)?;
                if line == "." {
                    transcript.push(".".to_string());
                    break;
                }
                transcript.push(format!("DATA:{line}"));
            },
            Step::Sleep(d) => thread::sleep(*d),
            Step::AwaitClose => {
                let mut rest = String::new();
                match reader.read_line(&mut rest) {
                    Ok(0) => transcript.push("(client closed)".to_string()),
                    Ok(_) => transcript.push(rest.trim_end().to_string()),
                    // A TLS client that just drops the socket ends without close_notify.
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        transcript.push("(client closed)".to_string())
                    }
                    Err(e) => return Err(format!("client did not close: {e}")),
                }
            }
        }
    }
    Ok(())
}

fn send(reader: &mut BufReader<Box<dyn Duplex>>, bytes: &[u8]) -> std::io::Result<()> {
    let out = reader.get_mut();
    out.write_all(bytes)?;
    out.flush()
}

/// The server side of TLS, with the test certificate.
fn server_config() -> Result<Arc<rustls::ServerConfig>, String> {
    let cert = CertificateDer::from_pem_slice(include_bytes!("../../fixtures/tls/peer.crt"))
        .map_err(|e| format!("test certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(include_bytes!("../../fixtures/tls/peer.key"))
        .map_err(|e| format!("test key: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(config))
}

fn read_line(reader: &mut BufReader<Box<dyn Duplex>>) -> Result<String, String> {
    let mut raw = Vec::new();
    let n = reader
        .read_until(b'\n', &mut raw)
        .map_err(|e| format!("reading from the client: {e}"))?;
    if n == 0 {
        return Err("the client closed the connection".to_string());
    }
    if !raw.ends_with(b"\r\n") {
        return Err(format!(
            "line without CRLF: {:?}",
            String::from_utf8_lossy(&raw)
        ));
    }
    raw.truncate(raw.len() - 2);
    Ok(String::from_utf8_lossy(&raw).into_owned())
}

/// The answer a server's reply makes, as an expected outcome: one line (`550 5.1.1 text`)
/// or the lines as sent, each ending in a line end.
pub(crate) fn said(reply: &str) -> Answer {
    let wire = if reply.ends_with('\n') {
        reply.to_string()
    } else {
        format!("{reply}\r\n")
    };
    let (reply, _) = Reply::parse(wire.as_bytes())
        .expect("a well-formed reply")
        .expect("a complete reply");
    Answer::Reply(reply)
}
