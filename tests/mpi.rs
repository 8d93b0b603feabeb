//! `mpirun -np 2 resnet train` (built with `--features mpi`): two ranks equal one process
//! on the same global batch, uneven shares, exact resume, Ctrl-C on one rank, divergence,
//! and a rank that dies or hangs. Needs Open MPI's `mpirun` (`cargo xtask test` installs
//! it); every run is bounded by `timeout`.
#![cfg(feature = "mpi")]

use resnet_core::train::checkpoint::TrainingState;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The longest any one run may take (the machine may be shared and slow).
const RUN_LIMIT_S: &str = "300";

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("resnet-mpi-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `mpirun -np N resnet ARGS` under `timeout`, as root if need be, ranks unbound (each
/// rank runs its own thread pool).
fn mpirun(np: usize, args: &[&str]) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.args(["-k", "10", RUN_LIMIT_S, "mpirun", "-np", &np.to_string()])
        .args(["--oversubscribe", "--bind-to", "none", env!("CARGO_BIN_EXE_resnet")])
        .args(args)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    cmd
}

fn run_mpi(np: usize, args: &[&str]) -> Output {
    mpirun(np, args).output().expect("run mpirun (is Open MPI installed?)")
}

/// One process, no MPI.
fn run_alone(args: &[&str]) -> Output {
    Command::new("timeout")
        .args(["-k", "10", RUN_LIMIT_S, env!("CARGO_BIN_EXE_resnet")])
        .args(args)
        .output()
        .expect("run resnet")
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CIFAR-10 binary folder of `per_batch` images in each of the five training batches:
/// pseudo-random pixels around a mean that depends on the class and the channel.
fn noisy_cifar(dir: &Path, per_batch: usize) -> PathBuf {
    let data = dir.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&data).unwrap();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut batch = |n: usize| {
        let mut out = Vec::new();
        for i in 0..n {
            let label = i % 10;
            out.push(label as u8);
            for c in 0..3 {
                for _ in 0..1024 {
                    let noise = (next() % 97) as usize;
                    out.push(((40 + label * 15 + c * 10 + noise) % 256) as u8);
                }
            }
        }
        out
    };
    for k in 1..=5 {
        std::fs::write(data.join(format!("data_batch_{k}.bin")), batch(per_batch)).unwrap();
    }
    std::fs::write(data.join("test_batch.bin"), batch(30)).unwrap();
    data
}

fn state(path: &Path) -> TrainingState {
    TrainingState::from_bytes(&std::fs::read(path).unwrap()).unwrap()
}

/// `||a - b|| / ||b||` over every weight of two runs, and over their batch norms' running
/// statistics.
fn relative_difference(a: &Path, b: &Path) -> (f64, f64) {
    let (a, b) = (state(a), state(b));
    let (pa, pb) = (&a.classifier.params, &b.classifier.params);
    assert_eq!(a.trainer.iteration, b.trainer.iteration);
    let rel = |x: &[f32], y: &[f32]| {
        let (mut diff, mut norm) = (0f64, 0f64);
        for (x, y) in x.iter().zip(y) {
            diff += ((x - y) as f64).powi(2);
            norm += (*y as f64).powi(2);
        }
        (diff / norm).sqrt()
    };
    (rel(pa.values(), pb.values()), rel(pa.buffers(), pb.buffers()))
}

/// Settings of the equivalence runs: resnet8, one thread per process (unless `extra` says
/// otherwise), lr 0.001.
fn equal_run(data: &Path, out: &Path, batch: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<&str> = vec!["train", "--model", "resnet8", "--data", s(data), "--iters", "20"];
    args.extend([
        "--batch",
        batch,
        "--lr",
        "0.001",
        "--seed",
        "3",
        "--quiet",
        "--out",
        s(out),
    ]);
    if !extra.contains(&"--threads") {
        args.extend(["--threads", "1"]);
    }
    args.extend(extra);
    args.iter().map(|a| a.to_string()).collect()
}

/// The tolerance of "the same weights": a step's gradients differ from one process's only
/// by summation order (each rank sums its own images, then the ranks' sums are added; the
/// batch-norm moments combine per-rank moments), about 1e-7 relative, and 20 steps of SGD
/// carry that forward and amplify it a little. Measured after these 20 steps: one process
/// on two threads against one thread (the same kind of difference) 1.5e-7; two ranks
/// against one process 2.8e-7 (batch 20) and 6.4e-7 (batch 19, shares 10 and 9);
/// per-rank batch norm, a real difference, 2.8e-4. (At lr 0.1 the same summation-order
/// differences grow to 1e-3 within 20 steps, between thread counts of one process as much
/// as between ranks: these runs use lr 0.001 so that the test measures the ranks, not how
/// chaotic training is.)
const SAME_WEIGHTS: f64 = 1e-5;

/// The running statistics average batch variances, which magnify the weights'
/// differences where a channel's variance is small: measured up to 4e-6.
const SAME_STATISTICS: f64 = 1e-4;

#[test]
fn two_ranks_with_synchronised_batch_norm_equal_one_process_on_the_global_batch() {
    let dir = tmp("equal");
    let data = noisy_cifar(&dir, 20);
    // The same kind of difference inside one process: one thread against two.
    let (one, two) = (dir.join("one-thread"), dir.join("two-threads"));
    let a = equal_run(&data, &one, "20", &[]);
    ok(&run_alone(&a.iter().map(String::as_str).collect::<Vec<_>>()));
    let b = equal_run(&data, &two, "20", &["--threads", "2"]);
    ok(&run_alone(&b.iter().map(String::as_str).collect::<Vec<_>>()));
    let (w, stats) = relative_difference(&two.join("checkpoint.safetensors"), &one.join("checkpoint.safetensors"));
    eprintln!("batch 20: 1 process on 2 threads against 1 thread: weights {w:.2e}, running statistics {stats:.2e}");
    for batch in ["20", "19"] {
        let one = dir.join(format!("one-{batch}"));
        let two = dir.join(format!("two-{batch}"));
        let a = equal_run(&data, &one, batch, &[]);
        ok(&run_alone(&a.iter().map(String::as_str).collect::<Vec<_>>()));
        let b = equal_run(&data, &two, batch, &[]);
        ok(&run_mpi(2, &b.iter().map(String::as_str).collect::<Vec<_>>()));
        let (w, stats) = relative_difference(&two.join("checkpoint.safetensors"), &one.join("checkpoint.safetensors"));
        eprintln!(
            "batch {batch}: 2 ranks against 1 process after 20 iterations: weights {w:.2e}, running statistics \
             {stats:.2e} relative"
        );
        assert!(w < SAME_WEIGHTS, "batch {batch}: weights {w:e}");
        assert!(stats < SAME_STATISTICS, "batch {batch}: running statistics {stats:e}");
    }
    // Without synchronised batch norm each rank normalises its own half: a different run.
    let local = dir.join("local");
    let c = equal_run(&data, &local, "20", &["--local-bn"]);
    ok(&run_mpi(2, &c.iter().map(String::as_str).collect::<Vec<_>>()));
    let (w, _) = relative_difference(
        &local.join("checkpoint.safetensors"),
        &dir.join("one-20/checkpoint.safetensors"),
    );
    eprintln!("--local-bn: 2 ranks against 1 process: weights {w:.2e} relative");
    assert!(w > 10.0 * SAME_WEIGHTS, "{w:e}");
}

#[test]
fn a_batch_that_does_not_feed_every_rank_is_refused() {
    let dir = tmp("small");
    let data = noisy_cifar(&dir, 20);
    // 100 images in batches of 11 leave a last batch of 1 for 2 ranks.
    let out = run_mpi(
        2,
        &[
            "train",
            "--model",
            "resnet8",
            "--data",
            s(&data),
            "--iters",
            "2",
            "--batch",
            "11",
            "--quiet",
            "--out",
            s(&dir.join("run")),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("2 ranks cannot share batches of 11 images"), "{err}");
}

#[test]
fn resume_under_mpi_continues_exactly() {
    let dir = tmp("resume");
    let data = noisy_cifar(&dir, 20);
    let common = [
        "train",
        "--model",
        "resnet8",
        "--data",
        s(&data),
        "--epochs",
        "2",
        "--batch",
        "8",
        "--threads",
        "1",
        "--seed",
        "5",
        "--quiet",
    ];
    let a = dir.join("a");
    ok(&run_mpi(2, &[&common[..], &["--out", s(&a)]].concat()));
    let b = dir.join("b");
    let out = run_mpi(2, &[&common[..], &["--out", s(&b), "--until-epoch", "1"]].concat());
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("stopping after epoch 1"));
    let ckpt = b.join("checkpoint.safetensors");
    ok(&run_mpi(
        2,
        &["train", "--resume", s(&ckpt), "--threads", "1", "--quiet"],
    ));
    let straight = std::fs::read(a.join("checkpoint.safetensors")).unwrap();
    let resumed = std::fs::read(&ckpt).unwrap();
    assert!(
        straight == resumed,
        "the resumed checkpoint differs from the straight run's"
    );
    // Rank 0 alone wrote the log: one line per epoch.
    let metrics = std::fs::read_to_string(b.join("metrics.jsonl")).unwrap();
    assert_eq!(
        metrics.lines().filter(|l| l.contains("\"kind\":\"epoch\"")).count(),
        2,
        "{metrics}"
    );
}

/// A long run on 2 ranks whose rank 0 has written its first checkpoint.
fn long_run(dir: &Path, extra: &[&str]) -> (Child, PathBuf) {
    let data = noisy_cifar(dir, 200);
    let run = dir.join("run");
    let child = mpirun(
        2,
        &[
            &[
                "train",
                "--model",
                "resnet8",
                "--data",
                s(&data),
                "--epochs",
                "500",
                "--batch",
                "10",
                "--threads",
                "1",
            ],
            &["--quiet", "--out", s(&run)][..],
            extra,
        ]
        .concat(),
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !run.join("checkpoint.safetensors").exists() {
        assert!(Instant::now() < deadline, "no checkpoint after 120 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, run)
}

/// The pid of rank `rank` among the processes `mpirun` started (`timeout` is the
/// spawned child; `mpirun` its child; the ranks, mpirun's).
fn rank_pid(launcher: u32, rank: usize) -> u32 {
    let children = |pid: u32| -> Vec<u32> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        text.split_whitespace().filter_map(|p| p.parse().ok()).collect()
    };
    let want = format!("OMPI_COMM_WORLD_RANK={rank}");
    for mpirun in children(launcher) {
        for p in children(mpirun) {
            let env = std::fs::read(format!("/proc/{p}/environ")).unwrap_or_default();
            if env.split(|&b| b == 0).any(|v| v == want.as_bytes()) {
                return p;
            }
        }
    }
    panic!("no process of rank {rank} under {launcher}");
}

fn signal(pid: u32, sig: &str) {
    assert!(Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success());
}

#[test]
fn ctrl_c_on_one_rank_stops_every_rank_with_a_checkpoint_that_resumes() {
    let dir = tmp("sigint");
    let (child, run) = long_run(&dir, &[]);
    signal(rank_pid(child.id(), 1), "-INT");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted at iteration"), "{err}");
    let it = state(&run.join("checkpoint.safetensors")).trainer.iteration;
    assert!(
        it >= 100,
        "the checkpoint is at iteration {it}, before the first epoch's end"
    );
    // The interrupted run goes on under MPI from where it stopped (one more epoch).
    let out = run_mpi(
        2,
        &[
            "train",
            "--resume",
            s(&run.join("checkpoint.safetensors")),
            "--until-epoch",
            &(it / 100 + 1).to_string(),
            "--quiet",
        ],
    );
    ok(&out);
    assert_eq!(
        state(&run.join("checkpoint.safetensors")).trainer.iteration,
        (it / 100 + 1) * 100
    );
}

#[test]
fn a_killed_rank_ends_the_run_with_an_error() {
    let dir = tmp("kill");
    let (child, _) = long_run(&dir, &[]);
    let start = Instant::now();
    signal(rank_pid(child.id(), 1), "-KILL");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("exited on signal 9"), "{err}");
    eprintln!(
        "the run ended {:.1} s after rank 1 was killed",
        start.elapsed().as_secs_f64()
    );
}

#[test]
fn a_hung_rank_ends_the_run_with_an_error_after_the_timeout() {
    let dir = tmp("hang");
    let (child, _) = long_run(&dir, &["--mpi-timeout", "5"]);
    let start = Instant::now();
    signal(rank_pid(child.id(), 1), "-STOP");
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("error: rank 0 of 2: no answer from the other ranks for 5 s"),
        "{err}"
    );
    eprintln!(
        "the run ended {:.1} s after rank 1 was stopped",
        start.elapsed().as_secs_f64()
    );
}

#[test]
fn divergence_stops_every_rank() {
    let dir = tmp("nan");
    let data = noisy_cifar(&dir, 20);
    let run = dir.join("run");
    let out = run_mpi(
        2,
        &[
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
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("diverged at iteration 0") && err.contains("no checkpoint was written"),
        "{err}"
    );
    // Rank 0 alone reports it.
    assert_eq!(err.matches("diverged at iteration 0").count(), 1, "{err}");
    assert!(!run.join("checkpoint.safetensors").exists());
}
