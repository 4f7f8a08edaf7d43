#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| themis_fuzz::raft_message_decode(data));
