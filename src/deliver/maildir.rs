//! Delivery into a Maildir tree on disk. (Placeholder until the real module lands.)

use std::path::{Path, PathBuf};

use super::{Deliverer, Delivery, Outcome, StoreError};

pub struct MaildirStore {
    root: PathBuf,
}

impl MaildirStore {
    pub fn new(root: &Path) -> Result<MaildirStore, StoreError> {
        Ok(MaildirStore { root: root.to_path_buf() })
    }
}

impl Deliverer for MaildirStore {
    fn describe(&self) -> String {
        format!("maildir:{}", self.root.display())
    }

    fn deliver(&mut self, _d: &Delivery<'_>, recipients: &[&str]) -> Result<Vec<Outcome>, StoreError> {
        Ok(recipients.iter().map(|_| Outcome::Deferred { reply: "not written".into() }).collect())
    }
}
