#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| themis_fuzz::vector_clock_decode(data));
