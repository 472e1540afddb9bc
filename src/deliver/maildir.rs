//! Delivery into a Maildir tree on disk.
