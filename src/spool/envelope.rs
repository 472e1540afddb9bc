//! Deriving an envelope from message headers when the spool carries none.
