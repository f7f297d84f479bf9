#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| kiroku::fuzzing::sdp_str0m(data));
