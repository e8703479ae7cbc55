//! Compile-fail and compile-pass tests of the macros. Each `fail/` file holds one mistake and
//! its `.stderr` the exact diagnostic; bless changes with `TRYBUILD=overwrite` and read the
//! diff.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("ui/topic/pass/*.rs");
    cases.compile_fail("ui/topic/fail/*.rs");
    cases.pass("ui/publish/pass/*.rs");
    cases.compile_fail("ui/publish/fail/*.rs");
    cases.pass("ui/consume/pass/*.rs");
    cases.compile_fail("ui/consume/fail/*.rs");
}
