//! Which fields may be a partition key attribute, decided by the compiler.
//!
//! dionysus-rb turns an attribute partition key into text with Ruby's `value.to_i.to_s`
//! ([`crate::wire::partition::partition_key_from_value`] implements that rule, P-26): an integer
//! stays itself, but a text such as `"k007"` becomes `"0"`, so every row of a model keyed by
//! text would land on one partition (and one relay bucket). `#[derive(Publishable)]`
//! therefore accepts a field as `partition_key` only when its type implements
//! [`IntegerPartitionKey`] (integers, `Option`s of them, type aliases of either). Any other
//! field is a compile error that offers `partition_key_with = path::to::fn` (use the text as
//! is) or `partition_key_to_i` (keep the gem's rule, byte for byte, e.g. beside a Ruby
//! producer of the same topic).
//!
//! The same check reaches a topic-level `partition_key` when a model names its topic by
//! type (`#[publish(topic = Rentals)]`): the topic carries the key as a type-level name
//! ([`FieldName`]), the model maps each of its field names to the field's type
//! ([`FieldOf`]), and a probe checks the named field when the model has one.
//!
//! This module owns those compile-time rules only; computing partition keys at run time is
//! `wire::partition`'s and the planner's job. A topic named by a string, and the configured
//! default partition key, are only known at run time and are not checked here.

use std::marker::PhantomData;

/// A field type whose values dionysus-rb's `to_i` leaves unchanged, so it can be a partition
/// key attribute as is: integers and `Option`s of them.
///
/// Implement it for your own type when it serializes as a JSON integer (an `AccountId(i64)`
/// newtype with `#[serde(transparent)]`).
#[diagnostic::on_unimplemented(
    message = "the field type `{Self}` cannot be a partition key attribute: dionysus-rb reads partition keys with Ruby's `to_i`",
    label = "not an integer: a text key such as \"k007\" becomes \"0\", so every row would land on one partition",
    note = "a `partition_key` (of the `#[publish(...)]`, or of a topic named by type) picks a field of the model; dionysus-rb sends `value.to_i.to_s` as its partition key",
    note = "to use the text as is, compute the key: `partition_key_with = path::to::fn` with `fn(&Model) -> Option<String>`",
    note = "to keep the gem's rule (byte for byte, e.g. beside a Ruby producer of this topic), add `partition_key_to_i` to the `#[publish(...)]`"
)]
pub trait IntegerPartitionKey {}

macro_rules! integer_partition_keys {
    ($($ty:ty),*) => {$(
        #[diagnostic::do_not_recommend]
        impl IntegerPartitionKey for $ty {}
    )*};
}
integer_partition_keys!(i8, i16, i32, i64, i128, isize, u8, u16, u32, u64, u128, usize);

#[diagnostic::do_not_recommend]
impl<T: IntegerPartitionKey> IntegerPartitionKey for Option<T> {}

/// Used by generated code: compiles only for an [`IntegerPartitionKey`].
#[doc(hidden)]
pub const fn integer_partition_key<T: IntegerPartitionKey + ?Sized>() {}

/// A field name as a type: the FNV-1a hash of the name (the macros compute it), so a topic
/// declaration can name a field of models it does not know.
#[doc(hidden)]
pub struct FieldName<const HASH: u64>;

/// A topic without a partition key.
#[doc(hidden)]
pub struct NoField;

/// Implemented by `#[derive(Publishable)]` for each field, keyed by its column's
/// [`FieldName`], when a publication needs its topic's partition key checked.
#[doc(hidden)]
pub trait FieldOf<Name> {
    type Type: ?Sized;
}

/// Probe used by generated code: `(&&FieldProbe::<Model, Name>::NEW).probe()` is
/// [`Found`] with the field's type when `Model` has the field, else `Found<NoField>`, which
/// passes (autoref specialisation).
#[doc(hidden)]
pub struct FieldProbe<Model, Name>(PhantomData<fn() -> (Model, Name)>);

impl<Model, Name> FieldProbe<Model, Name> {
    #[doc(hidden)]
    pub const NEW: Self = FieldProbe(PhantomData);
}

#[doc(hidden)]
pub struct Found<T: ?Sized>(PhantomData<fn() -> Box<T>>);

#[doc(hidden)]
pub trait FieldFound {
    type Type: ?Sized;
    fn probe(&self) -> Found<Self::Type>;
}

impl<Model: FieldOf<Name>, Name> FieldFound for &FieldProbe<Model, Name> {
    type Type = Model::Type;
    fn probe(&self) -> Found<Model::Type> {
        Found(PhantomData)
    }
}

#[doc(hidden)]
pub trait FieldMissing {
    fn probe(&self) -> Found<NoField>;
}

impl<Model, Name> FieldMissing for FieldProbe<Model, Name> {
    fn probe(&self) -> Found<NoField> {
        Found(PhantomData)
    }
}

/// No field, no partition key from it: nothing to check.
#[doc(hidden)]
impl IntegerPartitionKey for NoField {}

/// Used by generated code: compiles only when the probed field is an
/// [`IntegerPartitionKey`] (or missing).
#[doc(hidden)]
pub fn topic_partition_key<T: IntegerPartitionKey + ?Sized>(_: Found<T>) {}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rental;
    impl FieldOf<FieldName<1>> for Rental {
        type Type = Option<i64>;
    }

    #[test]
    #[allow(clippy::needless_borrow, reason = "the borrows choose the probe's impl, as in generated code")]
    fn the_probe_finds_a_field_the_model_has_and_misses_one_it_lacks() {
        #[allow(unused_imports)]
        use {FieldFound as _, FieldMissing as _};
        let found: Found<Option<i64>> = (&&FieldProbe::<Rental, FieldName<1>>::NEW).probe();
        let missing: Found<NoField> = (&&FieldProbe::<Rental, FieldName<2>>::NEW).probe();
        let none: Found<NoField> = (&&FieldProbe::<Rental, NoField>::NEW).probe();
        topic_partition_key(found);
        topic_partition_key(missing);
        topic_partition_key(none);
    }
}
