//! `resnet train` and `resnet plot` end to end on a tiny CIFAR-format data set the test
//! writes: exact resume, Ctrl-C, divergence, the run folder's files.

mod common;

use common::{resnet, s, tiny_cifar};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn tmp(name: &str) -> PathBuf {
    common::tmp("train", name)
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
    let run = dir.join("run");
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
        s(&run),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    // It diverges before any checkpoint exists, and says so rather than naming one.
    assert!(
        err.contains("diverged at iteration 0") && err.contains("no checkpoint was written"),
        "{err}"
    );
    assert!(!run.join("checkpoint.safetensors").exists());
}

#[test]
fn an_exploding_loss_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let dir = tmp("explode");
    let data = tiny_cifar(&dir, 20);
    let run = dir.join("run");
    // lr 4 held constant: finite but exploding (loss above 1e4) after the first epoch (its
    // exact iteration moves with the kernels' rounding: 24 once, 11 to 20 before). Epochs
    // are 10 iterations, each ending with a checkpoint.
    let out = tiny_run(&data, &run, &["--epochs", "10", "--lr", "4", "--schedule", "constant"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let ckpt = run.join("checkpoint.safetensors");
    let at: Option<u64> = err
        .split("diverged at iteration ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok());
    let at = at.unwrap_or_else(|| panic!("no iteration in {err}"));
    assert!(
        (11..100).contains(&at) && err.contains(&format!("last good checkpoint is {}", ckpt.display())),
        "{err}"
    );
    let state = resnet_core::train::checkpoint::TrainingState::from_bytes(&std::fs::read(&ckpt).unwrap()).unwrap();
    // The end of the last epoch that finished before the divergence.
    assert_eq!(state.trainer.iteration, at / 10 * 10);
    let p = &state.classifier.params;
    assert!(p.values().iter().chain(p.buffers()).all(|v| v.is_finite()));
}

#[test]
fn missing_data_says_where_to_put_it() {
    let dir = tmp("nodata");
    let out = resnet(&["train", "--data", s(&dir.join("absent")), "--quiet"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("absent"), "{err}");
}

/// Every file of a run folder, by name, with its bytes.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

/// A resnet8 run of one epoch in batches of 10 on two threads, unless `extra` says otherwise.
fn tiny_run(data: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "--model",
        "resnet8",
        "--data",
        s(data),
        "--quiet",
        "--out",
        s(out),
    ];
    for (key, value) in [("--epochs", "1"), ("--batch", "10"), ("--threads", "2")] {
        let given = |k: &str| extra.iter().any(|a| a.split('=').next() == Some(k));
        if !(given(key) || key == "--epochs" && given("--iters")) {
            args.extend([key, value]);
        }
    }
    resnet(&[&args[..], extra].concat())
}

#[test]
fn a_new_run_refuses_a_run_folder_and_force_changes_nothing_before_its_first_checkpoint() {
    let dir = tmp("folder");
    let data = tiny_cifar(&dir, 20);
    let run = dir.join("run");
    let out = tiny_run(&data, &run, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let first = files(&run);
    assert!(first.iter().any(|(n, _)| n == "best.safetensors"), "{first:?}");

    // Again into the same folder: refused, nothing touched.
    let out = tiny_run(&data, &run, &["--seed", "2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("holds another run") && err.contains("--force"),
        "{err}"
    );
    assert!(files(&run) == first, "the refused run changed the folder");

    // With --force, a run that stops before its first checkpoint (it diverges at once)
    // leaves the earlier run exactly as it was.
    let out = tiny_run(&data, &run, &["--force", "--lr", "1e30"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no checkpoint was written"), "{err}");
    assert!(
        files(&run) == first,
        "a forced run changed the folder before its first checkpoint"
    );

    // A forced run that saves replaces every file.
    let out = tiny_run(&data, &run, &["--force", "--seed", "3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let second = files(&run);
    assert_eq!(second.len(), first.len(), "{second:?}");
    for ((name, a), (_, b)) in first.iter().zip(&second) {
        // (The curves of two one-epoch runs may draw the same picture.)
        assert!(a != b || name == "curves.svg", "{name} was not replaced");
    }
}

/// A kill between the first checkpoint's log and the checkpoint itself leaves the run's
/// settings and log alone: the same command starts the run again, another is refused.
#[test]
fn a_start_killed_before_its_first_checkpoint_landed_restarts() {
    let dir = tmp("interrupted");
    let data = tiny_cifar(&dir, 20);
    let run = dir.join("run");
    let out = tiny_run(&data, &run, &["--seed", "5"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let log = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    for made in ["checkpoint.safetensors", "best.safetensors", "curves.svg"] {
        std::fs::remove_file(run.join(made)).unwrap();
    }
    std::fs::write(run.join("metrics.jsonl"), log.lines().next().unwrap()).unwrap();

    let out = tiny_run(&data, &run, &["--seed", "6"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("holds another run"), "{err}");
    let out = tiny_run(&data, &run, &["--seed", "5"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The same lines again, but for the timings.
    let untimed = |text: &str| -> Vec<serde_json::Value> {
        text.lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                for timing in ["seconds", "images_per_s"] {
                    v.as_object_mut().unwrap().remove(timing);
                }
                v
            })
            .collect()
    };
    assert_eq!(
        untimed(&std::fs::read_to_string(run.join("metrics.jsonl")).unwrap()),
        untimed(&log)
    );
    assert!(run.join("checkpoint.safetensors").is_file());
}

#[test]
fn resume_with_out_at_another_run_leaves_that_run_alone() {
    let dir = tmp("resume-out");
    let data = tiny_cifar(&dir, 20);
    let (a, b) = (dir.join("a"), dir.join("b"));
    for (run, epochs) in [(&a, "2"), (&b, "1")] {
        let out = tiny_run(&data, run, &["--epochs", epochs, "--until-epoch", "1"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let before = files(&b);
    let ckpt = a.join("checkpoint.safetensors");
    let out = resnet(&["train", "--resume", s(&ckpt), "--out", s(&b), "--quiet"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("holds another run"), "{err}");
    assert!(files(&b) == before, "resuming into another run's folder changed it");

    // Into a new folder: the log starts with the run's own lines up to the checkpoint.
    let c = dir.join("c");
    let out = resnet(&["train", "--resume", s(&ckpt), "--out", s(&c), "--quiet"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let log = std::fs::read_to_string(c.join("metrics.jsonl")).unwrap();
    assert_eq!(log.matches("\"kind\":\"epoch\"").count(), 2, "{log}");
    assert!(files(&b) == before);
}

#[test]
fn resume_from_another_folder_finds_relative_data_and_refuses_run_options() {
    let dir = tmp("relative");
    tiny_cifar(&dir, 20);
    // --data given relative to the folder the run starts in.
    let out = Command::new(env!("CARGO_BIN_EXE_resnet"))
        .current_dir(&dir)
        .args([
            "train",
            "--model",
            "resnet8",
            "--data",
            "cifar-10-batches-bin",
            "--epochs",
            "2",
            "--until-epoch",
            "1",
            "--batch",
            "10",
            "--quiet",
            "--out",
            "run",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ckpt = dir.join("run/checkpoint.safetensors");
    for extra in [
        &["--model", "resnet14"][..],
        &["--iters", "5"],
        &["--lr", "0.5"],
        &["--epochs", "3"],
    ] {
        let out = resnet(&[&["train", "--resume", s(&ckpt), "--quiet"][..], extra].concat());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("cannot be used with"),
            "{extra:?}: {err}"
        );
    }
    let out = resnet(&["train", "--resume", s(&ckpt), "--quiet"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn absurd_arguments_get_clear_errors() {
    let dir = tmp("args");
    let data = tiny_cifar(&dir, 20);
    let run = dir.join("run");
    let cases: [(&[&str], &str); 9] = [
        (&["--epochs", "18446744073709551615"], "--epochs"),
        (&["--batch", "100000000"], "--batch must be between 1 and 4096"),
        (&["--batch", "1000"], "larger than the training set"),
        (&["--lr=-0.1"], "--lr must be a positive number"),
        (&["--momentum=-0.5"], "--momentum must be in [0, 1)"),
        (&["--weight-decay=-1e-4"], "--weight-decay must be 0 or more"),
        (&["--threads", "100000"], "--threads must be between 1 and 1024"),
        (&["--eval-batch", "0"], "--eval-batch must be between 1"),
        (&["--iters", "0"], "at least one iteration"),
    ];
    for (extra, want) in cases {
        let out = tiny_run(&data, &run, extra);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {err}");
        assert!(err.contains(want), "{extra:?}: {err}");
        assert!(!run.exists(), "{extra:?} created the run folder");
    }
}

#[test]
fn sigkill_at_any_moment_leaves_a_checkpoint_that_loads_and_resumes() {
    use resnet_core::train::checkpoint::TrainingState;
    let dir = tmp("kill");
    // 100 images in batches of 10: 6 epochs of 10 iterations, a checkpoint after each.
    let data = tiny_cifar(&dir, 20);
    let run = dir.join("run");
    let ckpt = run.join("checkpoint.safetensors");
    let fresh = [
        "train",
        "--model",
        "resnet8",
        "--data",
        s(&data),
        "--epochs",
        "6",
        "--batch",
        "10",
        "--threads",
        "1",
        "--seed",
        "3",
        "--quiet",
        "--out",
        s(&run),
    ];
    let resume = ["train", "--resume", s(&ckpt), "--threads", "1", "--quiet"];
    // Kills at moments spread over start-up, the first epoch, checkpoint writes and later
    // epochs (the exact moment each lands on does not matter: every one must be safe).
    let mut last = 0u64;
    for delay_ms in [5u64, 60, 150, 250, 350, 450, 600, 800] {
        let args: &[&str] = if ckpt.exists() { &resume } else { &fresh };
        let mut child = Command::new(env!("CARGO_BIN_EXE_resnet"))
            .args(args)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        child.wait().unwrap();
        if ckpt.exists() {
            let bytes = std::fs::read(&ckpt).unwrap();
            let state = TrainingState::from_bytes(&bytes)
                .unwrap_or_else(|e| panic!("checkpoint after a kill at {delay_ms} ms does not load: {e}"));
            assert!(state.trainer.iteration >= last, "the checkpoint went back in time");
            last = state.trainer.iteration;
        } else {
            // At most the settings and the log, written just before the first checkpoint.
            assert!(
                !run.exists()
                    || std::fs::read_dir(&run).unwrap().all(|e| {
                        let n = e.unwrap().file_name().to_string_lossy().into_owned();
                        n.starts_with('.') && n.contains(".tmp-") || n == "config.json" || n == "metrics.jsonl"
                    }),
                "a run killed before its first checkpoint left files"
            );
        }
    }
    // Whatever was left resumes to the end of the run.
    let args: &[&str] = if ckpt.exists() { &resume } else { &fresh };
    let out = resnet(args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let state = TrainingState::from_bytes(&std::fs::read(&ckpt).unwrap()).unwrap();
    assert_eq!(state.trainer.iteration, 60);
    let log = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let epochs: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("\"kind\":\"epoch\""))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["epoch"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(epochs, vec![1, 2, 3, 4, 5, 6], "{log}");
}

/// `--precision bf16` is a setting of the run: stored in its config.json and checkpoint,
/// kept by `--resume`, and absent from an f32 run's settings (so runs from before the
/// option stay the same runs). On a CPU without AVX512_BF16 the run is refused at once.
#[test]
fn precision_is_a_run_setting_kept_by_resume() {
    let dir = tmp("precision");
    let data = tiny_cifar(&dir, 20);
    let plain = dir.join("f32");
    let out = tiny_run(&data, &plain, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config = std::fs::read_to_string(plain.join("config.json")).unwrap();
    assert!(!config.contains("\"precision\":"), "{config}");

    let half = dir.join("bf16");
    let out = tiny_run(
        &data,
        &half,
        &["--precision", "bf16", "--epochs", "2", "--until-epoch", "1"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        assert!(err.contains("AVX512_BF16"), "{err}");
        return;
    }
    let config = std::fs::read_to_string(half.join("config.json")).unwrap();
    assert!(config.contains("\"precision\": \"bf16\""), "{config}");
    let ckpt = half.join("checkpoint.safetensors");
    let out = resnet(&["train", "--resume", s(&ckpt), "--quiet"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = resnet(&["train", "--resume", s(&ckpt), "--precision", "f32"]);
    assert!(!out.status.success(), "a resumed run takes its own precision");
}
