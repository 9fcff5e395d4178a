#![no_main]
// See kvfetch::fuzzing::reference for what this target covers.
libfuzzer_sys::fuzz_target!(|data: &[u8]| kvfetch::fuzzing::reference(data));
