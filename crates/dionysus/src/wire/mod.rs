//! The wire format shared with dionysus-rb, and nothing else: the message envelope
//! (encoding and decoding values, tombstones), names derived from model names (keys, event
//! names, inflections), the partition key rules, times as the gem writes them, and a record's
//! JSON with its links and sideloads, and the names, headers and due times of delayed copies.
//!
//! This layer depends on no other module of the crate: producers and consumers both build on
//! it, and a rule of the wire is written here once.

pub mod delay;
pub mod envelope;
pub mod naming;
pub mod partition;
pub mod record;
pub mod time;
