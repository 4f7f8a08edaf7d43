#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| themis_fuzz::frame_decode(data));
