//! PyTorch legacy checkpoints (a sequence of pickles followed by raw storages).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = resnet_core::io::read_weights(data);
});
