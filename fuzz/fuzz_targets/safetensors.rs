//! safetensors reader: any bytes give tensors or an error, never a panic or an
//! allocation beyond what the file holds.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = resnet_core::io::safetensors::read_safetensors(data);
});
