#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| themis_fuzz::logical_parse(data));
