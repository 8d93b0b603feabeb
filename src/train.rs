//! `resnet train`: the paper's CIFAR-10 recipe (section 4.2) from the command line, with
//! checkpoints every epoch, exact resume, metrics, curves, Ctrl-C and divergence handling.

use crate::load::{open_data, progress_bar};
use crate::plot::write_run_curves;
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use resnet_core::classifier::Classifier;
use resnet_core::data::augment::{Augment, Batcher, Normalization};
use resnet_core::data::cifar::Split;
use resnet_core::data::Dataset;
use resnet_core::model::ResNetConfig;
use resnet_core::train::checkpoint::TrainingState;
use resnet_core::train::{Schedule, Sgd, Trainer, Warmup};
use resnet_core::{Error, Params, Tensor};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// The paper's run: 64k iterations at batch 128.
const PAPER_ITERATIONS: u64 = 64_000;
/// Iterations between two training-metrics lines.
const LOG_EVERY: u64 = 50;

/// Learning-rate schedules the command offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
pub enum ScheduleKind {
    /// Divide by 10 at 50 % and 75 % of the run (32k and 48k of 64k iterations).
    Paper,
    /// Cosine annealing to 0.
    Cosine,
    /// A constant rate.
    Constant,
}

/// Input preprocessing the command offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
pub enum NormalizeKind {
    /// Subtract the training set's per-pixel mean image (the paper).
    PerPixel,
    /// Per-channel mean and std of the training set.
    PerChannel,
}

/// Arguments of `resnet train`.
#[derive(Args)]
pub struct TrainArgs {
    /// Model name (resnet20, resnet32, ..., plain20, ...).
    #[arg(long, default_value = "resnet20")]
    model: String,
    /// CIFAR-10 binary folder or tarball, or an image folder with train/ and test/.
    #[arg(long, default_value = "data/cifar-10-batches-bin")]
    data: PathBuf,
    /// Epochs; the schedule's milestones scale to the same fractions of the run.
    #[arg(long, conflicts_with = "iters")]
    epochs: Option<u64>,
    /// Iterations (default 64,000 as in the paper).
    #[arg(long)]
    iters: Option<u64>,
    /// Mini-batch size.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Initial learning rate.
    #[arg(long, default_value_t = 0.1)]
    lr: f32,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f32,
    /// Weight decay.
    #[arg(long, default_value_t = 1e-4)]
    weight_decay: f32,
    /// Learning-rate schedule.
    #[arg(long, value_enum, default_value_t = ScheduleKind::Paper)]
    schedule: ScheduleKind,
    /// Linear warm-up over this many iterations (default: the paper's lr 0.01 for 400
    /// iterations for 110 layers and deeper, none otherwise).
    #[arg(long)]
    warmup_iters: Option<u64>,
    /// Hold out this many training images for validation (the paper's 45k/5k split: 5000).
    #[arg(long, default_value_t = 0)]
    val: usize,
    /// Input preprocessing.
    #[arg(long, value_enum, default_value_t = NormalizeKind::PerPixel)]
    normalize: NormalizeKind,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Seed for initialisation, shuffling and augmentation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run folder (default runs/<model>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run saved in this checkpoint (its own settings apply).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Stop after this epoch (the schedule still targets the whole run; resume later).
    #[arg(long)]
    until_epoch: Option<u64>,
    /// Images per evaluation batch.
    #[arg(long, default_value_t = 500)]
    eval_batch: usize,
    /// Plain log lines instead of progress bars.
    #[arg(long)]
    quiet: bool,
}

/// Settings that define a run; stored in `config.json` and in every checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct RunConfig {
    model: String,
    data: PathBuf,
    batch: usize,
    total_iterations: u64,
    seed: u64,
    val: usize,
    normalize: NormalizeKind,
    schedule: Schedule,
    momentum: f32,
    weight_decay: f32,
    train_images: usize,
    test_images: usize,
    batches_per_epoch: usize,
}

const RUN_KEY: &str = "run";

/// Runs training in a pool of the requested size.
pub fn run(args: TrainArgs) -> Result<()> {
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    pool.install(|| train(args, threads))
}

fn schedule_for(args: &TrainArgs, config: &ResNetConfig, total: u64) -> Schedule {
    let base = match args.schedule {
        ScheduleKind::Paper => Schedule::paper(args.lr, total),
        ScheduleKind::Cosine => Schedule::Cosine {
            base_lr: args.lr,
            total,
            min_lr: 0.0,
        },
        ScheduleKind::Constant => Schedule::Constant { base_lr: args.lr },
    };
    let depth = 2 + 2 * config.stage_blocks.iter().sum::<usize>();
    match args.warmup_iters {
        Some(0) => base,
        Some(iters) => base.with_warmup(Warmup::Linear {
            iters,
            start_factor: 0.0,
        }),
        // Section 4.2: "we use 0.01 to warm up the training until the training error is
        // below 80% (about 400 iterations)" for the 110-layer net.
        None if depth >= 110 => base.with_warmup(Warmup::Constant { iters: 400, lr: 0.01 }),
        None => base,
    }
}

fn split_data(args_data: &Path, val: usize, seed: u64, quiet: bool) -> Result<(Dataset, Option<Dataset>, Dataset)> {
    let train = open_data(args_data, Split::Train, quiet)?;
    let test = open_data(args_data, Split::Test, quiet)?;
    if train.is_empty() {
        bail!("the training split of {} is empty", args_data.display());
    }
    if val > 0 {
        if val >= train.len() {
            bail!("--val {val} leaves no training images (the split has {})", train.len());
        }
        let (t, v) = train.split(val, seed)?;
        return Ok((t, Some(v), test));
    }
    Ok((train, None, test))
}

fn train(args: TrainArgs, threads: usize) -> Result<()> {
    let started = Instant::now();
    let resumed = args.resume.as_ref().map(|ckpt| resume_run(&args, ckpt)).transpose()?;
    let (data, val, seed) = match &resumed {
        Some((_, run, _)) => (run.data.clone(), run.val, run.seed),
        None => (args.data.clone(), args.val, args.seed),
    };
    let (train_set, val_set, test_set) = split_data(&data, val, seed, args.quiet)?;
    let (mut state, run, out) = match resumed {
        Some(r) => r,
        None => new_run(&args, &train_set, &test_set)?,
    };
    if train_set.len() != run.train_images {
        bail!(
            "the data at {} has {} training images; the run was started with {}",
            run.data.display(),
            train_set.len(),
            run.train_images
        );
    }
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    if args.resume.is_none() {
        let json = serde_json::to_string_pretty(
            &serde_json::json!({ "run": run, "threads": threads, "model": state.classifier.config() }),
        )?;
        crate::fsutil::write_atomic(&out.join("config.json"), json.as_bytes())?;
        std::fs::write(out.join("metrics.jsonl"), b"")?;
    } else {
        truncate_metrics(&out.join("metrics.jsonl"), state.trainer.iteration)?;
    }
    let run_json = serde_json::to_string(&run)?;

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // A second Ctrl-C while the first is being honoured ends the process at once.
        let _ = ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
        });
    }

    let normalization = state.classifier.normalization.clone();
    let batcher = Batcher::train(
        &train_set,
        &normalization,
        run.batch,
        run.seed,
        Some(Augment::paper()),
        false,
    )?;
    let bpe = batcher.batches_per_epoch() as u64;
    let epochs = run.total_iterations.div_ceil(bpe);
    let per_image = train_set.image_len();
    let mut images = vec![0f32; run.batch * per_image];
    let mut labels = vec![0u32; run.batch];
    let mut metrics = std::fs::OpenOptions::new()
        .append(true)
        .open(out.join("metrics.jsonl"))?;
    let mut best_error = best_so_far(&out.join("metrics.jsonl"));
    let checkpoint_path = out.join("checkpoint.safetensors");
    let (side_h, side_w) = (train_set.height, train_set.width);
    let mut window = (0f64, 0usize, 0usize); // loss sum, errors, images since the last log line
    if !args.quiet {
        eprintln!(
            "training {} on {} images ({} test{}), {} iterations = {epochs} epochs of {bpe}, batch {}, {threads} thread(s) -> {}",
            state.classifier.config().name,
            train_set.len(),
            test_set.len(),
            val_set.as_ref().map_or(String::new(), |v| format!(", {} validation", v.len())),
            run.total_iterations,
            run.batch,
            out.display()
        );
    }
    let start_epoch = state.trainer.iteration / bpe;
    for epoch in start_epoch..epochs {
        let mut ep = batcher.epoch(epoch);
        if epoch == start_epoch {
            ep.seek((state.trainer.iteration % bpe) as usize);
        }
        let in_epoch = (bpe.min(run.total_iterations - epoch * bpe)) as usize;
        let bar = progress_bar(in_epoch, &format!("epoch {}/{epochs}", epoch + 1), args.quiet);
        bar.set_position(state.trainer.iteration % bpe);
        let epoch_start = Instant::now();
        let mut epoch_images = 0usize;
        while state.trainer.iteration < run.total_iterations {
            let Some(n) = ep.next_into(&mut images, &mut labels)? else {
                break;
            };
            let x = Tensor::new(vec![n, 3, side_h, side_w], images[..n * per_image].to_vec())?;
            let stats = match state.step(&x, &labels[..n]) {
                Ok(s) => s,
                Err(e @ Error::Diverged { .. }) => {
                    bar.abandon();
                    bail!(
                        "{e}; stopping. The last good checkpoint is {}",
                        checkpoint_path.display()
                    );
                }
                Err(e) => return Err(e.into()),
            };
            epoch_images += n;
            window.0 += stats.loss * n as f64;
            window.1 += ((1.0 - stats.accuracy) * n as f64).round() as usize;
            window.2 += n;
            let it = state.trainer.iteration;
            if it % LOG_EVERY == 0 {
                let line = serde_json::json!({
                    "kind": "train", "iteration": it, "epoch": it as f64 / bpe as f64, "lr": stats.lr,
                    "loss": window.0 / window.2 as f64, "error": window.1 as f64 / window.2 as f64,
                });
                writeln!(metrics, "{line}")?;
                let rate = epoch_images as f64 / epoch_start.elapsed().as_secs_f64();
                bar.set_message(format!(
                    "epoch {}/{epochs} loss {:.3} err {:.1}% {rate:.0} img/s",
                    epoch + 1,
                    window.0 / window.2 as f64,
                    100.0 * window.1 as f64 / window.2 as f64
                ));
                if args.quiet {
                    eprintln!(
                        "iteration {it} epoch {:.2} lr {:.4} loss {:.4} error {:.2}% {rate:.0} img/s",
                        it as f64 / bpe as f64,
                        stats.lr,
                        window.0 / window.2 as f64,
                        100.0 * window.1 as f64 / window.2 as f64
                    );
                }
                window = (0.0, 0, 0);
            }
            bar.inc(1);
            if stop.load(Ordering::SeqCst) {
                bar.abandon();
                save(&mut state, &run_json, &checkpoint_path)?;
                eprintln!(
                    "interrupted at iteration {}: saved {}; continue with --resume {}",
                    state.trainer.iteration,
                    checkpoint_path.display(),
                    checkpoint_path.display()
                );
                std::process::exit(130);
            }
        }
        bar.finish_and_clear();
        let train_rate = epoch_images as f64 / epoch_start.elapsed().as_secs_f64();
        let view = &mut state.classifier;
        let test = view.evaluate(&test_set, args.eval_batch, &mut |_, _| {})?;
        let test_error = 1.0 - test.top1 as f64 / test.total.max(1) as f64;
        let val_error = match &val_set {
            Some(v) => {
                let e = view.evaluate(v, args.eval_batch, &mut |_, _| {})?;
                Some(1.0 - e.top1 as f64 / e.total.max(1) as f64)
            }
            None => None,
        };
        let line = serde_json::json!({
            "kind": "epoch", "iteration": state.trainer.iteration, "epoch": epoch + 1,
            "test_error": test_error, "test_loss": test.loss, "val_error": val_error,
            "images_per_s": train_rate, "seconds": started.elapsed().as_secs_f64(),
        });
        writeln!(metrics, "{line}")?;
        metrics.flush()?;
        save(&mut state, &run_json, &checkpoint_path)?;
        let selection_error = val_error.unwrap_or(test_error);
        if selection_error < best_error {
            best_error = selection_error;
            let training = serde_json::json!({
                "epoch": epoch + 1, "iteration": state.trainer.iteration, "test_accuracy": 1.0 - test_error,
                "val_accuracy": val_error.map(|e| 1.0 - e), "data": run.data, "recipe": {
                    "batch": run.batch, "schedule": run.schedule, "momentum": run.momentum,
                    "weight_decay": run.weight_decay, "augmentation": "pad 4, random 32x32 crop, horizontal flip",
                    "seed": run.seed, "total_iterations": run.total_iterations,
                },
            });
            // The metadata goes into best.safetensors only, not into later checkpoints.
            let view = &mut state.classifier;
            view.metadata.insert("training".into(), training.to_string());
            let written = write_best(view, &out.join("best.safetensors"));
            view.metadata.remove("training");
            written?;
        }
        write_run_curves(&out, &state.classifier.config().name)?;
        let msg = format!(
            "epoch {}/{epochs}: iteration {}, test error {:.2}%{}, {train_rate:.0} train images/s, {:.0} s",
            epoch + 1,
            state.trainer.iteration,
            100.0 * test_error,
            val_error.map_or(String::new(), |e| format!(", validation error {:.2}%", 100.0 * e)),
            started.elapsed().as_secs_f64()
        );
        eprintln!("{msg}");
        if args.until_epoch == Some(epoch + 1) && state.trainer.iteration < run.total_iterations {
            eprintln!(
                "stopping after epoch {} as asked; continue with --resume {}",
                epoch + 1,
                checkpoint_path.display()
            );
            return Ok(());
        }
    }
    Ok(())
}

/// A fresh run from the command line's settings.
fn new_run(args: &TrainArgs, train: &Dataset, test: &Dataset) -> Result<(TrainingState, RunConfig, PathBuf)> {
    let config = ResNetConfig::named(&args.model)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(&args.model));
    if args.batch == 0 {
        bail!("the batch size must be positive");
    }
    let bpe = train.len().div_ceil(args.batch) as u64;
    let total = match (args.epochs, args.iters) {
        (Some(e), _) => e * bpe,
        (None, Some(i)) => i,
        (None, None) => PAPER_ITERATIONS,
    };
    if total == 0 {
        bail!("the run needs at least one iteration");
    }
    let schedule = schedule_for(args, &config, total);
    let config = config.with_classes(train.classes.len());
    let normalization = match args.normalize {
        NormalizeKind::PerPixel => Normalization::per_pixel_mean(train),
        NormalizeKind::PerChannel => Normalization::per_channel(train),
    };
    let state = TrainingState {
        classifier: Classifier::new(
            Params::new(config, args.seed)?,
            train.classes.clone(),
            normalization,
            Default::default(),
        ),
        trainer: Trainer::new(Sgd::new(args.momentum, args.weight_decay), schedule.clone()),
    };
    let run = RunConfig {
        model: args.model.clone(),
        data: args.data.clone(),
        batch: args.batch,
        total_iterations: total,
        seed: args.seed,
        val: args.val,
        normalize: args.normalize,
        schedule,
        momentum: args.momentum,
        weight_decay: args.weight_decay,
        train_images: train.len(),
        test_images: test.len(),
        batches_per_epoch: bpe as usize,
    };
    Ok((state, run, out))
}

/// A run continued from a checkpoint, with the settings stored in it.
fn resume_run(args: &TrainArgs, ckpt: &Path) -> Result<(TrainingState, RunConfig, PathBuf)> {
    let bytes = std::fs::read(ckpt).with_context(|| format!("cannot read {}", ckpt.display()))?;
    let mut state =
        TrainingState::from_bytes(&bytes).with_context(|| format!("cannot resume from {}", ckpt.display()))?;
    let run_json = state
        .classifier
        .metadata
        .remove(RUN_KEY)
        .context("the checkpoint has no run settings")?;
    let run: RunConfig = serde_json::from_str(&run_json).context("the checkpoint's run settings are invalid")?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| ckpt.parent().unwrap_or(Path::new(".")).to_path_buf());
    Ok((state, run, out))
}

fn save(state: &mut TrainingState, run_json: &str, path: &Path) -> Result<()> {
    state.classifier.metadata.insert(RUN_KEY.into(), run_json.to_string());
    let bytes = state.to_bytes();
    state.classifier.metadata.remove(RUN_KEY);
    let bytes = bytes?;
    crate::fsutil::write_atomic(path, &bytes).with_context(|| format!("cannot write {}", path.display()))
}

fn write_best(view: &mut Classifier, path: &Path) -> Result<()> {
    let bytes = view.to_safetensors()?;
    crate::fsutil::write_atomic(path, &bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// The lowest selection error (validation, else test) of the epochs already in `path`,
/// so that a resumed run only replaces `best.safetensors` with something better.
fn best_so_far(path: &Path) -> f64 {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "epoch")
        .filter_map(|v| v["val_error"].as_f64().or_else(|| v["test_error"].as_f64()))
        .fold(f64::INFINITY, f64::min)
}

/// Drops metric lines past `iteration` (written after the checkpoint a run resumes from).
fn truncate_metrics(path: &Path, iteration: u64) -> Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["iteration"].as_u64())
                .is_some_and(|it| it <= iteration)
        })
        .collect();
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    crate::fsutil::write_atomic(path, out.as_bytes())?;
    Ok(())
}
