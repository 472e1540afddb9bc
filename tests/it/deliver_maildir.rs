//! Integration tests: deliver_maildir.
