//! A field name as a type, `FieldName<HASH>`: the topic attribute names its partition key
//! field this way and `#[derive(Publishable)]` keys each of its fields the same way, so the
//! compiler can check a topic's partition key against a model neither macro sees whole.
//! Both macros compute the hash here, so they always agree.

use proc_macro2::{Literal, TokenStream};
use quote::quote;

/// `__d::FieldName<HASH>` for a column name (`__d` being `::dionysus::__private`, as in
/// every expansion).
pub(crate) fn type_of(name: &str) -> TokenStream {
    let hash = Literal::u64_unsuffixed(fnv1a(name));
    quote!(__d::FieldName<#hash>)
}

/// 64-bit FNV-1a of the name's bytes.
fn fnv1a(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_hash_with_fnv1a() {
        // Reference values of 64-bit FNV-1a.
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(fnv1a("account_id"), fnv1a("account_ids"));
    }
}
