//! CIFAR-10 binary batches and the class-name file.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = resnet_core::data::cifar::parse_cifar_batch(data, "fuzz");
    let _ = resnet_core::data::cifar::parse_meta(data, "fuzz");
});
