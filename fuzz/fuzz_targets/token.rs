#![no_main]
// See kvfetch::fuzzing::token for what this target covers.
libfuzzer_sys::fuzz_target!(|data: &[u8]| kvfetch::fuzzing::token(data));
