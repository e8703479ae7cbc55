//! Compile-fail and compile-pass tests of the macros. Each `fail/` file holds one mistake and
//! its `.stderr` the exact diagnostic; bless changes with `TRYBUILD=overwrite` and read the
//! diff.
//!
//! Avro schemas named by the cases are read from `tests/schemas/` (the macros' schema
//! directory, given to the compiler of each case through `DIONYSUS_SCHEMA_DIR`).

#[test]
fn ui() {
    std::env::set_var("DIONYSUS_SCHEMA_DIR", concat!(env!("CARGO_MANIFEST_DIR"), "/schemas"));
    let cases = trybuild::TestCases::new();
    cases.pass("ui/topic/pass/*.rs");
    cases.compile_fail("ui/topic/fail/*.rs");
    cases.pass("ui/publish/pass/*.rs");
    cases.compile_fail("ui/publish/fail/*.rs");
    cases.pass("ui/consume/pass/*.rs");
    cases.compile_fail("ui/consume/fail/*.rs");
}
