#![no_main]
// See kvfetch::fuzzing::der for what this target covers.
libfuzzer_sys::fuzz_target!(|data: &[u8]| kvfetch::fuzzing::der(data));
