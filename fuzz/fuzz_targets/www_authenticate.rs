#![no_main]
// See kvfetch::fuzzing::www_authenticate for what this target covers.
libfuzzer_sys::fuzz_target!(|data: &[u8]| kvfetch::fuzzing::www_authenticate(data));
