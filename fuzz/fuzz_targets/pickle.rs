//! The restricted unpickler alone: no panic, memory within its documented budget
//! (libFuzzer's -rss_limit_mb catches a budget that does not hold).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = resnet_core::io::pickle::unpickle(data);
});
