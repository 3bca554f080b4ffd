//! The detectors: plain, synchronous structs over bounded state, driven with an
//! explicit time (integer nanoseconds) so tests run them on a fake clock.
//!
//! Keys are 64-bit keyed hashes built by the layer; the detectors never see a raw
//! identifier. Each detector answers with a score from 1 to 100 when it fires.

mod enumeration;
#[cfg(test)]
mod memory;
mod score;
mod sequence;
mod stuffing;
mod token;
mod volume;

pub(crate) use enumeration::EnumerationDetector;
pub(crate) use sequence::{SequenceDetector, Step};
pub(crate) use stuffing::StuffingDetector;
pub(crate) use token::TokenSharingDetector;
pub(crate) use volume::VolumeDetector;
