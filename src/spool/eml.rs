//! Reader for eml spools: a folder of `.eml` files, each optionally with a JSON envelope.
//!
//! The folder is walked **recursively** (names starting with `.` are skipped: editor
//! backups, AppleDouble `._x.eml` files; symlinked folders are not followed) and files are
//! read in path order. The queue id is the path below the folder without `.eml`
//! (`msg1`, or `2023/msg1` in a subfolder), so ids stay unique. The extension is matched
//! case-insensitively.
//!
//! `NAME.eml` may have a sidecar `NAME.json` with the envelope:
//!
//! ```json
//! {"sender": "a@b.test", "recipients": ["x@y.test", {"address": "z@y.test",
//!  "orcpt": "rfc822;z@y.test", "notify": "FAILURE,DELAY"}],
//!  "arrival": "2023-01-23T10:00:00+01:00", "envid": "abc", "ret": "HDRS"}
//! ```
//!
//! `recipients` is required and non-empty; `sender` (`""` = null sender) and `arrival`
//! (RFC 3339) may be left out, and are then taken from the headers like for a message
//! without a sidecar (see `envelope`). Any unknown key, wrong type, bad date or bad NOTIFY
//! quarantines the message with a reason naming the key: a typo in an envelope must not
//! silently drop data. A `.json` file with no matching `.eml` is quarantined for the same
//! reason; other files are ignored. Values are taken literally: `envid` and `orcpt` are
//! expected already xtext-decoded, as `Envelope` stores them.
//!
//! The shard key is the queue id (the path below the folder without the extension); an
//! orphan sidecar has the key its `.eml` would have. A folder that cannot be listed has
//! no key (see `shard`).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use chrono::DateTime;
use serde_json::{Map, Value};

use super::envelope::{self, GivenEnvelope};
use super::{
    Quarantined, Recipient, Selection, SourceRef, SpoolError, SpoolFormat, SpoolItem, file_item,
};
use crate::address::{self, Mailbox, Notify, ReturnContent, ReversePath};
use crate::rfc3461;

/// True for a file name ending in `.eml` (any case) that is not hidden.
pub fn is_eml_name(name: &OsStr) -> bool {
    let name = name.to_string_lossy();
    !name.starts_with('.') && has_extension(Path::new(name.as_ref()), "eml")
}

fn has_extension(path: &Path, ext: &str) -> bool {
    path.extension()
        .is_some_and(|e| e.to_string_lossy().eq_ignore_ascii_case(ext))
}

/// Lists the `.eml` files under `path`; reading happens as the iterator advances.
pub fn read(path: &Path) -> Result<EmlReader, SpoolError> {
    read_selected(path, Selection::all())
}

/// Like `read`, yielding only the items `selection` takes.
pub fn read_selected(path: &Path, selection: Selection) -> Result<EmlReader, SpoolError> {
    let root = std::path::absolute(path).map_err(|source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if !root.is_dir() {
        return Err(SpoolError::Unrecognized {
            path: path.to_path_buf(),
            why: "an eml spool must be a directory of `.eml` files".into(),
        });
    }
    let top = list_folder(&root).map_err(|source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(EmlReader {
        root,
        folders: vec![top],
        selection,
    })
}

/// One folder being read: its entries in name order (names only, so a folder of a
/// million messages costs tens of megabytes, not the whole tree's paths).
struct Folder {
    dir: PathBuf,
    names: std::vec::IntoIter<std::ffi::OsString>,
    /// Stems of this folder's `.eml` files, to find sidecars without one.
    eml_stems: HashSet<std::ffi::OsString>,
}

fn list_folder(dir: &Path) -> std::io::Result<Folder> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        if !name.to_string_lossy().starts_with('.') {
            names.push(name);
        }
    }
    names.sort();
    let eml_stems = names
        .iter()
        .filter(|n| has_extension(Path::new(n), "eml"))
        .filter_map(|n| Path::new(n).file_stem().map(|s| s.to_os_string()))
        .collect();
    Ok(Folder {
        dir: dir.to_path_buf(),
        names: names.into_iter(),
        eml_stems,
    })
}

/// The path below the spool folder, without `.eml`, with `/` separators.
fn queue_id(root: &Path, path: &Path) -> String {
    let relative = path.strip_prefix(root).unwrap_or(path).with_extension("");
    relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// Streams the messages of one eml folder, depth first in path order, one folder listing
/// per level in memory. Folders that cannot be listed are quarantined, not skipped.
pub struct EmlReader {
    root: PathBuf,
    folders: Vec<Folder>,
    selection: Selection,
}

impl Iterator for EmlReader {
    type Item = SpoolItem;

    fn next(&mut self) -> Option<SpoolItem> {
        loop {
            let folder = self.folders.last_mut()?;
            let Some(name) = folder.names.next() else {
                self.folders.pop();
                continue;
            };
            let path = folder.dir.join(&name);
            // Symlinked folders are not followed: `symlink_metadata` sees the link itself.
            let is_dir = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
            if is_dir {
                match list_folder(&path) {
                    Ok(sub) => self.folders.push(sub),
                    Err(e) if self.selection.takes_keyless() => {
                        return Some(quarantine(&path, format!("cannot list folder: {e}")));
                    }
                    Err(_) => {}
                }
                continue;
            }
            if has_extension(&path, "eml") {
                let queue_id = queue_id(&self.root, &path);
                if self.selection.takes(&queue_id) {
                    return Some(message(&path, queue_id));
                }
                continue;
            }
            let stem = Path::new(&name).file_stem().map(|s| s.to_os_string());
            if path.extension() == Some(OsStr::new("json"))
                && !stem.is_some_and(|s| folder.eml_stems.contains(&s))
                && self.selection.takes(&queue_id(&self.root, &path))
            {
                return Some(quarantine(
                    &path,
                    "sidecar has no matching `.eml` file (check its name)".into(),
                ));
            }
        }
    }
}

fn quarantine(path: &Path, reason: String) -> SpoolItem {
    // The link itself, never its target: a link to `/etc/shadow` says nothing about it.
    let len = std::fs::symlink_metadata(path).map_or(0, |m| if m.is_file() { m.len() } else { 0 });
    SpoolItem::Quarantined(Quarantined {
        source: SourceRef {
            format: SpoolFormat::Eml,
            path: path.to_path_buf(),
            offset: 0,
            len,
        },
        reason,
    })
}

fn message(path: &Path, queue_id: String) -> SpoolItem {
    match read_sidecar(&path.with_extension("json")) {
        Ok(given) => file_item(path, SpoolFormat::Eml, queue_id, given),
        Err(reason) => quarantine(path, reason),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `Ok(None)` when there is no sidecar; `Err` is a quarantine reason. A sidecar that is
/// not a regular file (a FIFO, a link to `/dev/zero`) is refused without being opened.
fn read_sidecar(path: &Path) -> Result<Option<GivenEnvelope>, String> {
    let bytes = match super::read_regular(path) {
        Ok((b, _)) => b,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(format!("sidecar `{}`: {e}", file_name(path))),
    };
    parse_sidecar(&bytes)
        .map(Some)
        .map_err(|e| format!("bad sidecar: {e}"))
}

const SIDECAR_KEYS: [&str; 5] = ["sender", "recipients", "arrival", "envid", "ret"];
const RECIPIENT_KEYS: [&str; 3] = ["address", "orcpt", "notify"];

/// Parses a sidecar's JSON into the envelope fields it gives.
pub fn parse_sidecar(bytes: &[u8]) -> Result<GivenEnvelope, String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    let Value::Object(map) = value else {
        return Err("not a JSON object".into());
    };
    reject_unknown_keys(&map, &SIDECAR_KEYS, "")?;
    let sender = optional_string(&map, "sender")?.map(ReversePath::parse);
    let recipients = match map.get("recipients") {
        None => return Err("missing `recipients`".into()),
        Some(Value::Array(list)) if list.is_empty() => return Err("`recipients` is empty".into()),
        Some(Value::Array(list)) => list
            .iter()
            .enumerate()
            .map(|(i, v)| parse_recipient(i, v))
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err("`recipients` must be an array".into()),
    };
    let arrival = optional_string(&map, "arrival")?
        .map(|s| {
            DateTime::parse_from_rfc3339(s)
                .map_err(|e| format!("`arrival` is not an RFC 3339 date (`{s}`): {e}"))
        })
        .transpose()?;
    let envid = optional_string(&map, "envid")?.map(str::to_string);
    let ret = optional_string(&map, "ret")?
        .map(|r| r.parse::<ReturnContent>().map_err(|e| format!("`ret` {e}")))
        .transpose()?;
    Ok(GivenEnvelope {
        sender,
        recipients: Some(envelope::dedupe(recipients)),
        arrival,
        envid,
        ret,
    })
}

fn reject_unknown_keys(
    map: &Map<String, Value>,
    known: &[&str],
    prefix: &str,
) -> Result<(), String> {
    match map.keys().find(|k| !known.contains(&k.as_str())) {
        Some(key) => Err(format!(
            "unknown key `{prefix}{key}` (known: {})",
            known.join(", ")
        )),
        None => Ok(()),
    }
}

fn optional_string<'a>(map: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, String> {
    match map.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("`{key}` must be a string")),
    }
}

fn parse_recipient(index: usize, value: &Value) -> Result<Recipient, String> {
    let recipient = match value {
        // Blanks only: U+0085 and other controls stay, to be refused rather than hidden.
        Value::String(address) => Recipient::plain(address.trim_matches([' ', '\t'])),
        Value::Object(map) => {
            reject_unknown_keys(map, &RECIPIENT_KEYS, &format!("recipients[{index}]."))?;
            let at = |key: &str| format!("recipients[{index}].{key}");
            let address = match map.get("address") {
                Some(Value::String(a)) => a.trim_matches([' ', '\t']).to_string(),
                Some(_) => return Err(format!("`{}` must be a string", at("address"))),
                None => return Err(format!("missing `{}`", at("address"))),
            };
            let string = |key: &str| match map.get(key) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(format!("`{}` must be a string", at(key))),
            };
            let orcpt = string("orcpt")?
                .map(|o| {
                    rfc3461::check_orcpt(&o)
                        .map(|()| o)
                        .map_err(|e| format!("`{}` {e}", at("orcpt")))
                })
                .transpose()?;
            let notify = string("notify")?
                .map(|n| {
                    n.parse::<Notify>()
                        .map_err(|e| format!("`{}` {e}", at("notify")))
                })
                .transpose()?;
            Recipient {
                address,
                orcpt,
                notify,
                prior: None,
            }
        }
        _ => {
            return Err(format!(
                "`recipients[{index}]` must be a string or an object"
            ));
        }
    };
    let address = address::unbracketed(&recipient.address);
    Mailbox::parse(address).map_err(|e| format!("`recipients[{index}]`: {e}"))?;
    Ok(Recipient {
        address: address.to_string(),
        ..recipient
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sidecar(json: &str) -> Result<GivenEnvelope, String> {
        parse_sidecar(json.as_bytes())
    }

    #[test]
    fn full_sidecar() {
        let given = sidecar(
            r#"{"sender": "a@b.test", "arrival": "2023-01-23T10:00:00+01:00", "envid": "e1",
                "ret": "hdrs", "recipients": ["x@y.test", {"address": "z@y.test",
                "orcpt": "rfc822;Z@y.test", "notify": "FAILURE, delay"}, "x@Y.TEST"]}"#,
        )
        .unwrap();
        assert_eq!(given.sender, Some(ReversePath::Address("a@b.test".into())));
        assert_eq!(
            given.arrival,
            Some(DateTime::parse_from_rfc3339("2023-01-23T10:00:00+01:00").unwrap())
        );
        assert_eq!(given.envid.as_deref(), Some("e1"));
        assert_eq!(given.ret, Some(ReturnContent::Headers));
        assert_eq!(
            given.recipients,
            Some(vec![
                Recipient::plain("x@y.test"),
                Recipient {
                    address: "z@y.test".into(),
                    orcpt: Some("rfc822;Z@y.test".into()),
                    notify: Some(Notify {
                        failure: true,
                        delay: true,
                        ..Notify::default()
                    }),
                    prior: None,
                },
            ])
        );
    }

    #[test]
    fn minimal_sidecar_and_null_sender() {
        let given = sidecar(r#"{"recipients": ["<x@y.test>"], "sender": ""}"#).unwrap();
        assert_eq!(given.sender, Some(ReversePath::Null));
        assert_eq!(given.recipients, Some(vec![Recipient::plain("x@y.test")]));
        assert_eq!(given.arrival, None);
        let given = sidecar(r#"{"recipients": ["x@y.test"]}"#).unwrap();
        assert_eq!(given.sender, None, "absent sender is unknown, not null");
    }

    #[test]
    fn sidecar_errors_name_the_key() {
        let cases = [
            ("{", "not valid JSON"),
            ("[]", "not a JSON object"),
            (r#"{"sender": "a@b"}"#, "missing `recipients`"),
            (r#"{"recipients": []}"#, "`recipients` is empty"),
            (r#"{"recipients": "x@y"}"#, "`recipients` must be an array"),
            (r#"{"recipient": ["x@y"]}"#, "unknown key `recipient`"),
            (
                r#"{"recipients": [{"adress": "x@y"}]}"#,
                "unknown key `recipients[0].adress`",
            ),
            (
                r#"{"recipients": [{"notify": "NEVER"}]}"#,
                "missing `recipients[0].address`",
            ),
            (
                r#"{"recipients": [7]}"#,
                "`recipients[0]` must be a string or an object",
            ),
            (
                r#"{"recipients": ["nobody"]}"#,
                "`recipients[0]`: address `nobody` has no `@domain`",
            ),
            (
                r#"{"recipients": ["x@y"], "arrival": "yesterday"}"#,
                "`arrival` is not an RFC 3339 date (`yesterday`)",
            ),
            (
                r#"{"recipients": ["x@y"], "sender": null}"#,
                "`sender` must be a string",
            ),
            (
                r#"{"recipients": ["x@y"], "ret": "BODY"}"#,
                "`ret` must be FULL or HDRS, not `BODY`",
            ),
            (
                r#"{"recipients": [{"address": "x@y", "orcpt": "x@y"}]}"#,
                "`recipients[0].orcpt` must be `addr-type;address`",
            ),
            (
                r#"{"recipients": [{"address": "x@y", "notify": "NEVER,FAILURE"}]}"#,
                "`recipients[0].notify` combines NEVER",
            ),
            (
                r#"{"recipients": [{"address": "x@y", "notify": "SOMETIMES"}]}"#,
                "`recipients[0].notify` has unknown value `SOMETIMES`",
            ),
        ];
        for (json, expected) in cases {
            let err = sidecar(json).unwrap_err();
            assert!(
                err.starts_with(expected),
                "{json}: got `{err}`, want `{expected}…`"
            );
        }
    }

    #[test]
    fn queue_ids_are_relative_paths_without_extension() {
        let root = Path::new("/spool");
        assert_eq!(queue_id(root, Path::new("/spool/msg1.eml")), "msg1");
        assert_eq!(queue_id(root, Path::new("/spool/2023/a.b.EML")), "2023/a.b");
    }

    #[test]
    fn eml_names() {
        assert!(is_eml_name(OsStr::new("a.eml")));
        assert!(is_eml_name(OsStr::new("a.EML")));
        assert!(!is_eml_name(OsStr::new("._a.eml")));
        assert!(!is_eml_name(OsStr::new("a.json")));
        assert!(!is_eml_name(OsStr::new("eml")));
    }
}
