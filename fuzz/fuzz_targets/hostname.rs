#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| corral_parsers::fuzz::hostname(data));
