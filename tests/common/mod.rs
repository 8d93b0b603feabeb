//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};

/// A CIFAR-10 binary folder: `per_batch` images in each of the five training batches.
pub fn tiny_cifar(dir: &Path, per_batch: usize) -> PathBuf {
    let data = dir.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&data).unwrap();
    let batch = |n: usize, salt: usize| {
        let mut out = Vec::new();
        for i in 0..n {
            let label = i % 10;
            out.push(label as u8);
            for c in 0..3 {
                for p in 0..1024 {
                    out.push(((label * 25 + c * 60 + (p * 7 + i * 13 + salt) % 41) % 256) as u8);
                }
            }
        }
        out
    };
    for k in 1..=5 {
        std::fs::write(data.join(format!("data_batch_{k}.bin")), batch(per_batch, k)).unwrap();
    }
    std::fs::write(data.join("test_batch.bin"), batch(30, 99)).unwrap();
    data
}
