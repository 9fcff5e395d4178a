#![no_main]
// See kvfetch::fuzzing::list_page for what this target covers.
libfuzzer_sys::fuzz_target!(|data: &[u8]| kvfetch::fuzzing::list_page(data));
