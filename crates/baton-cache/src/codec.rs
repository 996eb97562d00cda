//! Compact binary encoding of the values kept in `meta.sqlite` rows (input fingerprints, output
//! manifests, log chunks).
//!
//! Integers are LEB128 varints; byte strings are a varint length followed by the bytes; digests are
//! 32 raw bytes. Every encoded value starts with a one-byte format tag so a row written by another
//! layout is rejected instead of misread.

/// Appends values to a byte buffer.
#[derive(Default)]
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn with_tag(tag: u8) -> Self {
        let mut w = Self::default();
        w.u8(tag);
        w
    }

    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub(crate) fn varint(&mut self, mut v: u64) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.buf.push(byte);
                return;
            }
            self.buf.push(byte | 0x80);
        }
    }

    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.varint(b.len() as u64);
        self.buf.extend_from_slice(b);
    }

    pub(crate) fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    pub(crate) fn digest(&mut self, d: &[u8; 32]) {
        self.buf.extend_from_slice(d);
    }
}

/// Why a stored value could not be decoded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("truncated record")]
    Truncated,
    #[error("unknown record format {0}")]
    Tag(u8),
    #[error("invalid value in record: {0}")]
    Invalid(&'static str),
}

/// Reads values written by [`Writer`].
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn with_tag(buf: &'a [u8], tag: u8) -> Result<Self, DecodeError> {
        let mut r = Self { buf, pos: 0 };
        let got = r.u8()?;
        if got != tag {
            return Err(DecodeError::Tag(got));
        }
        Ok(r)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        let b = *self.buf.get(self.pos).ok_or(DecodeError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    pub(crate) fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        let mut shift = 0u32;
        loop {
            let b = self.u8()?;
            if shift >= 64 {
                return Err(DecodeError::Invalid("varint too long"));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
            shift += 7;
        }
    }

    pub(crate) fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = usize::try_from(self.varint()?).map_err(|_| DecodeError::Truncated)?;
        let end = self.pos.checked_add(len).ok_or(DecodeError::Truncated)?;
        let out = self.buf.get(self.pos..end).ok_or(DecodeError::Truncated)?;
        self.pos = end;
        Ok(out)
    }

    pub(crate) fn str(&mut self) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| DecodeError::Invalid("string is not UTF-8"))
    }

    pub(crate) fn digest(&mut self) -> Result<[u8; 32], DecodeError> {
        let end = self.pos + 32;
        let out = self.buf.get(self.pos..end).ok_or(DecodeError::Truncated)?;
        self.pos = end;
        let mut d = [0u8; 32];
        d.copy_from_slice(out);
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut w = Writer::with_tag(7);
        w.varint(0);
        w.varint(300);
        w.varint(u64::MAX);
        w.str("héllo");
        w.digest(&[9; 32]);
        let mut r = Reader::with_tag(&w.buf, 7).unwrap();
        assert_eq!(r.varint().unwrap(), 0);
        assert_eq!(r.varint().unwrap(), 300);
        assert_eq!(r.varint().unwrap(), u64::MAX);
        assert_eq!(r.str().unwrap(), "héllo");
        assert_eq!(r.digest().unwrap(), [9; 32]);
        assert!(r.is_empty());
        assert!(matches!(r.u8(), Err(DecodeError::Truncated)));
        assert!(matches!(
            Reader::with_tag(&w.buf, 8),
            Err(DecodeError::Tag(7))
        ));
    }
}
