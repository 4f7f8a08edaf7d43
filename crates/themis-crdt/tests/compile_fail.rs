//! Misuse that must not compile. Each file in `tests/ui/` is one mistake; its `.stderr` is
//! the compiler's refusal (regenerate with `TRYBUILD=overwrite` after a toolchain bump).

#[test]
fn misuse_is_a_compile_error() {
    trybuild::TestCases::new().compile_fail("tests/ui/*.rs");
}
