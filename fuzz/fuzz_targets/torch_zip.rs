//! PyTorch zip checkpoints (torch >= 1.6): the zip reader, the restricted unpickler and
//! the storage views. Seeds are zip checkpoints; inputs that are not zips reach the other
//! readers too.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = resnet_core::io::torch::read_torch(data);
    let _ = resnet_core::io::zip::ZipArchive::new(data).map(|z| {
        let names: Vec<String> = z.entries().iter().map(|e| e.name.clone()).collect();
        for n in names {
            let _ = z.entry_data(&n);
        }
    });
});
