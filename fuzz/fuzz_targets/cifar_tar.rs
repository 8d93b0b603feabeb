//! CIFAR-10 tarballs (gzipped or not): gunzip with its limit, the tar reader, the batches.
#![no_main]
use libfuzzer_sys::fuzz_target;
use resnet_core::data::cifar::{load_cifar10_targz, Split};

fuzz_target!(|data: &[u8]| {
    let _ = load_cifar10_targz(data, Split::Test);
    let _ = resnet_core::data::tar::read_tar(data, "fuzz");
});
