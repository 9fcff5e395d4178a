#![no_main]
// See kvfetch::fuzzing::secret_bundle for what this target covers.
libfuzzer_sys::fuzz_target!(|data: &[u8]| kvfetch::fuzzing::secret_bundle(data));
