//! The Confluent wire framing of a schema-registry message: the magic byte `0`, the writer
//! schema's registry id as 4 big-endian bytes, then the Avro binary datum. Without a
//! registry (`avro_local`) a message is the bare datum.

/// The first byte of a framed message.
pub const MAGIC: u8 = 0;
/// Magic byte plus schema id.
pub const HEADER_LEN: usize = 5;

/// A message that is not framed as the registry serializers frame it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FramingError {
    /// Fewer than the 5 header bytes.
    #[error("the message has {len} byte(s), fewer than the 5 of a schema-registry header")]
    TooShort {
        /// The message's length.
        len: usize,
    },
    /// The first byte is not `0`.
    #[error("the message starts with byte {byte:#04x}, not the schema-registry magic byte 0x00")]
    BadMagic {
        /// The first byte.
        byte: u8,
    },
}

/// `datum` framed with the schema id.
pub fn frame(schema_id: u32, datum: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(HEADER_LEN + datum.len());
    framed.push(MAGIC);
    framed.extend_from_slice(&schema_id.to_be_bytes());
    framed.extend_from_slice(datum);
    framed
}

/// The schema id and the datum of a framed message.
pub fn unframe(message: &[u8]) -> Result<(u32, &[u8]), FramingError> {
    match message {
        [MAGIC, a, b, c, d, datum @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), datum)),
        [byte, _, _, _, _, ..] => Err(FramingError::BadMagic { byte: *byte }),
        _ => Err(FramingError::TooShort { len: message.len() }),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_header_is_magic_then_the_big_endian_id() {
        assert_eq!(frame(258, &[9]), vec![0, 0, 0, 1, 2, 9]);
        assert_eq!(unframe(&[0, 0, 0, 1, 2, 9]), Ok((258, &[9][..])));
    }

    #[test]
    fn short_or_unframed_messages_are_rejected() {
        assert_eq!(unframe(&[0, 0, 1]), Err(FramingError::TooShort { len: 3 }));
        assert_eq!(unframe(b"{\"a\":1}"), Err(FramingError::BadMagic { byte: b'{' }));
    }

    proptest! {
        #[test]
        fn framing_round_trips(id in any::<u32>(), datum in proptest::collection::vec(any::<u8>(), 0..64)) {
            let framed = frame(id, &datum);
            prop_assert_eq!(unframe(&framed), Ok((id, &datum[..])));
        }
    }
}
