#![no_main]
// See kvfetch::fuzzing::pkcs12 for what this target covers.
libfuzzer_sys::fuzz_target!(|data: &[u8]| kvfetch::fuzzing::pkcs12(data));
