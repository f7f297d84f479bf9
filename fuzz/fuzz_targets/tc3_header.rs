#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| kiroku::fuzzing::tc3_header(data));
