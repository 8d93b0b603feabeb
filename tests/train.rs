//! `resnet train` and `resnet plot` end to end on a tiny CIFAR-format data set the test
//! writes: exact resume, Ctrl-C, divergence, the run folder's files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn resnet(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_resnet"))
        .args(args)
        .output()
        .expect("run resnet")
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("resnet-train-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A CIFAR-10 binary folder: `per_batch` images in each of the five training batches.
fn tiny_cifar(dir: &Path, per_batch: usize) -> PathBuf {
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

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn two_epochs_straight_equal_one_plus_resumed_one() {
    let dir = tmp("resume");
    let data = tiny_cifar(&dir, 20);
    // 100 images in batches of 4: 25 iterations an epoch, a training-metrics line at 50.
    let common = [
        "train",
        "--model",
        "resnet8",
        "--data",
        s(&data),
        "--epochs",
        "2",
        "--batch",
        "4",
        "--threads",
        "2",
        "--seed",
        "5",
        "--quiet",
    ];
    let a = dir.join("a");
    let out = resnet(&[&common[..], &["--out", s(&a)]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let b = dir.join("b");
    let out = resnet(&[&common[..], &["--out", s(&b), "--until-epoch", "1"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("stopping after epoch 1"));
    let ckpt = b.join("checkpoint.safetensors");
    let out = resnet(&["train", "--resume", s(&ckpt), "--threads", "2", "--quiet"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let straight = std::fs::read(a.join("checkpoint.safetensors")).unwrap();
    let resumed = std::fs::read(&ckpt).unwrap();
    assert!(straight == resumed, "resumed checkpoint differs from the straight run");
    for f in ["config.json", "metrics.jsonl", "best.safetensors", "curves.svg"] {
        assert!(a.join(f).is_file(), "missing {f}");
    }
    let metrics = std::fs::read_to_string(b.join("metrics.jsonl")).unwrap();
    assert_eq!(
        metrics.lines().filter(|l| l.contains("\"kind\":\"epoch\"")).count(),
        2,
        "{metrics}"
    );
    // The best weights are a classifier with the training recipe in their metadata.
    let eval = resnet(&[
        "eval",
        "--weights",
        s(&a.join("best.safetensors")),
        "--data",
        s(&data),
        "--json",
    ]);
    assert!(eval.status.success(), "{}", String::from_utf8_lossy(&eval.stderr));

    // Two runs overlaid in one chart.
    let svg = dir.join("both.svg");
    let out = resnet(&["plot", s(&a), s(&b), "--out", s(&svg)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        text.contains("a test") && text.contains("b train") && text.matches("<polyline").count() == 4,
        "{text}"
    );
}

#[test]
fn ctrl_c_saves_a_checkpoint_that_resumes() {
    let dir = tmp("sigint");
    // 1000 images in batches of 8: epochs of 125 steps, long enough to interrupt inside one.
    let data = tiny_cifar(&dir, 200);
    let run = dir.join("run");
    let child = Command::new(env!("CARGO_BIN_EXE_resnet"))
        .args([
            "train",
            "--model",
            "resnet8",
            "--data",
            s(&data),
            "--epochs",
            "3",
            "--batch",
            "8",
            "--quiet",
            "--out",
            s(&run),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the first epoch to finish, then interrupt.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !run.join("checkpoint.safetensors").exists() {
        assert!(std::time::Instant::now() < deadline, "no checkpoint after 60 s");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted at iteration"), "{err}");
    let ckpt = run.join("checkpoint.safetensors");
    let out = resnet(&["train", "--resume", s(&ckpt), "--quiet"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let epochs: Vec<&str> = metrics.lines().filter(|l| l.contains("\"kind\":\"epoch\"")).collect();
    assert_eq!(epochs.len(), 3, "{metrics}");
    assert!(epochs[2].contains("\"iteration\":375"), "{metrics}");
}

#[test]
fn divergence_names_the_iteration() {
    let dir = tmp("nan");
    let data = tiny_cifar(&dir, 20);
    let out = resnet(&[
        "train",
        "--model",
        "resnet8",
        "--data",
        s(&data),
        "--epochs",
        "3",
        "--batch",
        "16",
        "--lr",
        "1e30",
        "--quiet",
        "--out",
        s(&dir.join("run")),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("diverged at iteration") && err.contains("last good checkpoint"),
        "{err}"
    );
}

#[test]
fn missing_data_says_where_to_put_it() {
    let dir = tmp("nodata");
    let out = resnet(&["train", "--data", s(&dir.join("absent")), "--quiet"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("absent"), "{err}");
}
