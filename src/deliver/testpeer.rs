//! A scripted SMTP/LMTP peer on `127.0.0.1:0` for unit tests: a thread plays one script per
//! accepted connection and records every line the client sent.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::thread::{self, JoinHandle};
use std::time::Duration;

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
}

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
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    for step in script {
        match step {
            Step::Send(text) => {
                let bytes = text.replace('\n', "\r\n");
                // The client may already have gone (that is what some tests check).
                let _ = writer.write_all(bytes.as_bytes());
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
                    Err(e) => return Err(format!("client did not close: {e}")),
                }
            }
        }
    }
    Ok(())
}

fn read_line(reader: &mut BufReader<TcpStream>) -> Result<String, String> {
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
