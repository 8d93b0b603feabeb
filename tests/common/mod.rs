//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the `resnet` binary with `args` and waits for it.
pub fn resnet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_resnet"))
        .args(args)
        .output()
        .expect("run resnet")
}

/// A fresh folder for one test: `<temp>/resnet-<suite>-<pid>-<name>`.
pub fn tmp(suite: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("resnet-{suite}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A path as the `&str` a command line takes.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

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
