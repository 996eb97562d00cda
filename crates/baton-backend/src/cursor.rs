//! Observation cursors: `bo_` followed by exactly 16 lowercase hex digits of a global sequence.
//!
//! The format is the one the yoi Backend Runtime API client decodes (seed 001): a prefix `bo_`
//! and a fixed-width hexadecimal `u64`. Baton emits lowercase digits and accepts only lowercase,
//! so every sequence has exactly one spelling and an `event_id` can be compared as a string.

use std::fmt;

/// A position in the backend's global event log: the sequence of one event (`1..`), or `0`
/// ("before everything").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cursor(pub u64);

/// Why [`Cursor::parse`] refused a string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed cursor {0:?}: expected bo_ followed by 16 lowercase hex digits")]
pub struct CursorError(pub String);

impl Cursor {
    /// Parses `bo_` + 16 lowercase hex digits.
    ///
    /// # Errors
    /// [`CursorError`] for any other spelling (wrong prefix, length, upper case, non-hex).
    pub fn parse(text: &str) -> Result<Self, CursorError> {
        let bad = || CursorError(text.chars().take(64).collect());
        let hex = text.strip_prefix("bo_").ok_or_else(bad)?;
        if hex.len() != 16 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad());
        }
        u64::from_str_radix(hex, 16).map(Cursor).map_err(|_| bad())
    }

    /// The sequence number.
    pub fn sequence(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bo_{:016x}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_other_spellings() {
        assert_eq!(Cursor(1).to_string(), "bo_0000000000000001");
        assert_eq!(Cursor(0xabc).to_string(), "bo_0000000000000abc");
        assert_eq!(Cursor::parse("bo_00000000000000ff"), Ok(Cursor(255)));
        assert_eq!(
            Cursor::parse(&Cursor(u64::MAX).to_string()),
            Ok(Cursor(u64::MAX))
        );
        for bad in [
            "",
            "bo_",
            "bo_1",
            "bo_00000000000000FF",
            "xx_00000000000000ff",
            "bo_00000000000000fg",
            "bo_000000000000000ff",
            "bo_+000000000000000",
        ] {
            assert!(Cursor::parse(bad).is_err(), "{bad}");
        }
    }
}
