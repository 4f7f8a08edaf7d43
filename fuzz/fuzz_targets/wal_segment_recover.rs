#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| themis_fuzz::wal_segment_recover(data));
