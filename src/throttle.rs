//! Pacing deliveries: a token bucket over a clock the caller passes in.
