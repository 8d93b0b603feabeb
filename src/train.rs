//! `resnet train`: the paper's CIFAR-10 recipe (section 4.2) from the command line, with
//! checkpoints every epoch, exact resume, metrics, curves, Ctrl-C and divergence handling.

#[cfg(feature = "mpi")]
use crate::cluster::{Cluster, DataParallel};
use crate::load::{open_data, progress_bar};
use crate::plot::write_run_curves;
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use resnet_core::classifier::Classifier;
use resnet_core::data::augment::{batch_share, Augment, Batcher, Normalization};
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

/// Arithmetic of the training step's products.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 throughout.
    #[default]
    F32,
    /// bf16 products summed in f32: the 1x1 convolutions' passes, and with AMX tiles the
    /// forward and backward-data of every other convolution but the stem and the
    /// backward-filter of those of 64 input channels or more (without AMX, the Winograd
    /// ones of 128 channels or more as F(2x2)); f32 weights, gradients, batch-norm
    /// statistics and everything else. Needs a CPU with AVX512_BF16.
    Bf16,
}

impl Precision {
    fn is_f32(&self) -> bool {
        *self == Precision::F32
    }
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
    /// Model name (resnet20, resnet32, ..., plain20, ...; default resnet20).
    #[arg(long, conflicts_with = "resume")]
    model: Option<String>,
    /// CIFAR-10 binary folder or tarball, or an image folder with train/ and test/
    /// (default data/cifar-10-batches-bin). With --resume: where the run's data is now.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Epochs; the schedule's milestones scale to the same fractions of the run.
    #[arg(long, conflicts_with_all = ["iters", "resume"])]
    epochs: Option<u64>,
    /// Iterations (default 64,000 as in the paper).
    #[arg(long, conflicts_with = "resume")]
    iters: Option<u64>,
    /// Mini-batch size (at most the training set's size and 4096).
    #[arg(long, default_value_t = 128, conflicts_with = "resume")]
    batch: usize,
    /// Initial learning rate (positive).
    #[arg(long, default_value_t = 0.1, conflicts_with = "resume")]
    lr: f32,
    /// SGD momentum, in [0, 1).
    #[arg(long, default_value_t = 0.9, conflicts_with = "resume")]
    momentum: f32,
    /// Weight decay (0 or more).
    #[arg(long, default_value_t = 1e-4, conflicts_with = "resume")]
    weight_decay: f32,
    /// Learning-rate schedule.
    #[arg(long, value_enum, default_value_t = ScheduleKind::Paper, conflicts_with = "resume")]
    schedule: ScheduleKind,
    /// Linear warm-up over this many iterations (default: the paper's lr 0.01 for 400
    /// iterations for 110 layers and deeper, none otherwise).
    #[arg(long, conflicts_with = "resume")]
    warmup_iters: Option<u64>,
    /// Hold out this many training images for validation (the paper's 45k/5k split: 5000).
    #[arg(long, default_value_t = 0, conflicts_with = "resume")]
    val: usize,
    /// Input preprocessing.
    #[arg(long, value_enum, default_value_t = NormalizeKind::PerPixel, conflicts_with = "resume")]
    normalize: NormalizeKind,
    /// Arithmetic of the convolutions' products (bf16 needs a CPU with AVX512_BF16).
    #[arg(long, value_enum, default_value_t = Precision::F32, conflicts_with = "resume")]
    precision: Precision,
    /// Worker threads (default: all cores; at most 1024).
    #[arg(long)]
    threads: Option<usize>,
    /// Seed for initialisation, shuffling and augmentation.
    #[arg(long, default_value_t = 0, conflicts_with = "resume")]
    seed: u64,
    /// Run folder (default runs/<model>; with --resume, the checkpoint's folder).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write into a folder that holds another run (its files are replaced once this run
    /// has written its first checkpoint).
    #[arg(long)]
    force: bool,
    /// Continue the run saved in this checkpoint (its own settings apply; the options
    /// that define a run cannot be given with it).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Stop after this epoch (the schedule still targets the whole run; resume later).
    #[arg(long)]
    until_epoch: Option<u64>,
    /// Images per evaluation batch (at most 4096).
    #[arg(long, default_value_t = 500)]
    eval_batch: usize,
    /// Plain log lines instead of progress bars.
    #[arg(long)]
    quiet: bool,
    /// Under MPI: batch-norm statistics of each rank's own share of the batch, as
    /// PyTorch DDP by default (instead of the global batch's, as one process computes).
    #[cfg(feature = "mpi")]
    #[arg(long)]
    local_bn: bool,
    /// Under MPI: seconds to wait for the other ranks at any point before ending the
    /// job with an error (rank 0 evaluates and saves at the end of each epoch while the
    /// others wait).
    #[cfg(feature = "mpi")]
    #[arg(long, default_value_t = 300.0)]
    mpi_timeout: f64,
}

/// Without the `mpi` feature there is no MPI job to be a rank of.
#[cfg(not(feature = "mpi"))]
enum Cluster {}

#[cfg(not(feature = "mpi"))]
impl Cluster {
    fn rank(&self) -> usize {
        match *self {}
    }

    fn size(&self) -> usize {
        match *self {}
    }
}

/// An end that every rank of a data-parallel run meets at the same step (a divergence,
/// an interruption): all ranks stop together, rank 0 alone prints `message` (when not
/// empty), and each exits with `code`.
#[derive(Debug)]
#[cfg_attr(not(feature = "mpi"), allow(dead_code))] // only made with a cluster
pub struct AllRanks {
    /// The exit code of every rank.
    pub code: u8,
    /// What rank 0 prints.
    pub message: String,
}

impl std::fmt::Display for AllRanks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for AllRanks {}

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
    /// Absent (f32) in runs from before the option, which stay the same runs.
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    precision: Precision,
    train_images: usize,
    test_images: usize,
    batches_per_epoch: usize,
}

const RUN_KEY: &str = "run";

/// The largest `--batch` and `--eval-batch`: a training batch of 4096 CIFAR images
/// already needs gigabytes of activations; larger ones would abort on allocation.
pub const MAX_BATCH: usize = 4096;
/// The largest `--threads`: more threads than this only cost time to start.
pub const MAX_THREADS: usize = 1024;
/// The run's settings and log, written just before its first checkpoint.
const LOG_FILES: [&str; 2] = ["config.json", "metrics.jsonl"];
/// What a run's checkpoints write; a new run that replaces a folder's run removes them
/// before its first checkpoint.
const CHECKPOINT_FILES: [&str; 3] = ["checkpoint.safetensors", "best.safetensors", "curves.svg"];

/// A rayon pool of `threads` (default: all cores), refusing absurd counts before any
/// thread is started.
pub fn thread_pool(threads: Option<usize>) -> Result<(rayon::ThreadPool, usize)> {
    let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if threads == 0 || threads > MAX_THREADS {
        bail!("--threads must be between 1 and {MAX_THREADS}, found {threads}");
    }
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    Ok((pool, threads))
}

impl TrainArgs {
    /// A run of the paper's recipe (lr 0.1 divided by 10 at 50 % and 75 %, momentum 0.9,
    /// weight decay 1e-4, per-pixel mean, no validation split) of `epochs`, or of the
    /// paper's 64k iterations when `None`, for commands that run several trainings.
    pub(crate) fn paper(model: &str, data: &Path, epochs: Option<u64>, batch: usize, seed: u64, out: PathBuf) -> Self {
        TrainArgs {
            model: Some(model.into()),
            data: Some(data.to_path_buf()),
            epochs,
            iters: None,
            batch,
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 1e-4,
            schedule: ScheduleKind::Paper,
            warmup_iters: None,
            val: 0,
            normalize: NormalizeKind::PerPixel,
            precision: Precision::F32,
            threads: None,
            seed,
            out: Some(out),
            force: false,
            resume: None,
            until_epoch: None,
            eval_batch: 500,
            quiet: true,
            #[cfg(feature = "mpi")]
            local_bn: false,
            #[cfg(feature = "mpi")]
            mpi_timeout: 300.0,
        }
    }

    /// The same run continued from the checkpoint at `checkpoint`.
    pub(crate) fn resuming(mut self, checkpoint: PathBuf) -> Self {
        self.resume = Some(checkpoint);
        self.out = None;
        self
    }

    /// Progress bars instead of plain log lines.
    pub(crate) fn with_progress_bars(mut self, bars: bool) -> Self {
        self.quiet = !bars;
        self
    }
}

/// Where a run stands at the end of one of its epochs, for a command that runs several
/// trainings and says how long the whole set has left (`resnet reproduce`).
pub(crate) struct EpochReport {
    pub iteration: u64,
    pub total_iterations: u64,
    /// Seconds per training iteration over the epoch just ended.
    pub seconds_per_iteration: f64,
}

/// Called at the end of every epoch; the line it returns is printed after the epoch's.
pub(crate) type EpochNote<'a> = &'a dyn Fn(&EpochReport) -> Option<String>;

/// The training and test sets, already read, for a command that trains several nets on
/// the same data without a validation split.
pub(crate) struct Loaded<'a> {
    pub train: &'a Dataset,
    pub test: &'a Dataset,
}

/// Runs one training in the current thread pool, on `data` when given (it must be what
/// the run's `--data` holds); `note` is asked for a line at each epoch's end.
pub(crate) fn train_in_pool(
    args: TrainArgs,
    threads: usize,
    data: Option<Loaded>,
    note: Option<EpochNote>,
) -> Result<()> {
    check_args(&args)?;
    train(args, threads, None, data, note)
}

/// The settings a new run of `args` on `train` and `test` would store, as the
/// `run` value of its `config.json`.
pub(crate) fn planned_run(args: &TrainArgs, train: &Dataset, test: &Dataset) -> Result<serde_json::Value> {
    let model = args.model.clone().unwrap_or_else(|| "resnet20".into());
    let config = ResNetConfig::named(&model)?;
    Ok(serde_json::to_value(run_config(args, model, &config, train, test)?)?)
}

/// The `run` settings of the run in `dir` (`Null` when its `config.json` cannot be read
/// but it holds run files), or `None` when `dir` holds no run.
pub(crate) fn existing_run(dir: &Path) -> Option<serde_json::Value> {
    run_in(dir)
}

/// Whether two runs' `run` settings describe the same run (the data may have moved).
pub(crate) fn is_same_run(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    same_run(a, b)
}

/// The flag a Ctrl-C sets. The handler is installed once per process, so that every
/// training a command runs in turn sees it; a second Ctrl-C while the first is being
/// honoured ends the process at once.
fn stop_flag() -> &'static AtomicBool {
    static STOP: AtomicBool = AtomicBool::new(false);
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let _ = ctrlc::set_handler(|| {
            if STOP.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
        });
    });
    &STOP
}

/// Runs training in a pool of the requested size; started by `mpirun` (with the `mpi`
/// feature), as one rank of a data-parallel run.
pub fn run(args: TrainArgs) -> Result<()> {
    check_args(&args)?;
    let (pool, threads) = thread_pool(args.threads)?;
    #[cfg(feature = "mpi")]
    if crate::cluster::launched() {
        if !(args.mpi_timeout.is_finite() && args.mpi_timeout > 0.0) {
            bail!(
                "--mpi-timeout must be a positive number of seconds, found {}",
                args.mpi_timeout
            );
        }
        let cluster = Cluster::init(std::time::Duration::from_secs_f64(args.mpi_timeout))?;
        let result = pool.install(|| train(args, threads, Some(&cluster), None, None));
        return cluster.finish(result);
    }
    pool.install(|| train(args, threads, None, None, None))
}

/// Refuses settings that cannot make a run, before any data is read.
fn check_args(args: &TrainArgs) -> Result<()> {
    if args.batch == 0 || args.batch > MAX_BATCH {
        bail!("--batch must be between 1 and {MAX_BATCH}, found {}", args.batch);
    }
    if args.eval_batch == 0 || args.eval_batch > MAX_BATCH {
        bail!(
            "--eval-batch must be between 1 and {MAX_BATCH}, found {}",
            args.eval_batch
        );
    }
    if !(args.lr.is_finite() && args.lr > 0.0) {
        bail!("--lr must be a positive number, found {}", args.lr);
    }
    if !(0.0..1.0).contains(&args.momentum) {
        bail!("--momentum must be in [0, 1), found {}", args.momentum);
    }
    if !(args.weight_decay.is_finite() && args.weight_decay >= 0.0) {
        bail!("--weight-decay must be 0 or more, found {}", args.weight_decay);
    }
    if args.epochs == Some(0) || args.iters == Some(0) {
        bail!("the run needs at least one iteration");
    }
    Ok(())
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

/// A run folder and what this run has written into it. Until the run has saved its
/// first checkpoint, `pending` holds the files it will write (nothing of a run that was
/// in the folder before is touched until then); afterwards the metrics are appended.
struct RunFolder {
    dir: PathBuf,
    checkpoint: PathBuf,
    /// `config.json` and the metrics so far, written just before the first checkpoint.
    pending: Option<(String, Vec<u8>)>,
    /// Whether the folder holds another run, whose other files the first checkpoint removes.
    replaces: bool,
    metrics: Option<std::fs::File>,
    /// The newest checkpoint that holds this run's state (a resumed run starts with the
    /// checkpoint it resumed from).
    last_good: Option<PathBuf>,
    /// False in the ranks of a data-parallel run other than rank 0: they write nothing.
    enabled: bool,
}

impl RunFolder {
    /// A folder whose files are written with the first checkpoint; `metrics` are the
    /// lines the log starts with.
    fn deferred(
        dir: PathBuf,
        config_json: String,
        metrics: Vec<u8>,
        last_good: Option<PathBuf>,
        replaces: bool,
    ) -> Self {
        RunFolder {
            checkpoint: dir.join("checkpoint.safetensors"),
            dir,
            pending: Some((config_json, metrics)),
            replaces,
            metrics: None,
            last_good,
            enabled: true,
        }
    }

    /// The folder as a rank other than 0 sees it: nothing is read or written.
    fn disabled(dir: PathBuf) -> Self {
        RunFolder {
            checkpoint: dir.join("checkpoint.safetensors"),
            dir,
            pending: None,
            replaces: false,
            metrics: None,
            last_good: None,
            enabled: false,
        }
    }

    /// The run's own folder, continued in place: its log is cut back to `iteration`.
    fn continued(dir: PathBuf, iteration: u64, resumed_from: PathBuf) -> Result<Self> {
        let path = dir.join("metrics.jsonl");
        truncate_metrics(&path, iteration)?;
        let metrics = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok(RunFolder {
            checkpoint: dir.join("checkpoint.safetensors"),
            dir,
            pending: None,
            replaces: false,
            metrics: Some(metrics),
            last_good: Some(resumed_from),
            enabled: true,
        })
    }

    /// The metrics written so far.
    fn metrics_text(&self) -> String {
        if !self.enabled {
            return String::new();
        }
        match &self.pending {
            Some((_, lines)) => String::from_utf8_lossy(lines).into_owned(),
            None => std::fs::read_to_string(self.dir.join("metrics.jsonl")).unwrap_or_default(),
        }
    }

    /// Appends one line to the log (kept in memory until the first checkpoint).
    fn log(&mut self, line: &serde_json::Value) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        match (&mut self.pending, &mut self.metrics) {
            (Some((_, lines)), _) => {
                lines.extend_from_slice(line.to_string().as_bytes());
                lines.push(b'\n');
                Ok(())
            }
            (None, Some(f)) => writeln!(f, "{line}")
                .and_then(|()| f.flush())
                .with_context(|| format!("cannot write {}", self.dir.join("metrics.jsonl").display())),
            (None, None) => unreachable!("a run folder has a log or pending lines"),
        }
    }

    /// Saves the checkpoint atomically. The first one writes `config.json` and the log
    /// before it, and first removes what a replaced run left (its checkpoint,
    /// `best.safetensors`, `curves.svg`): the checkpoint lands last, so a kill at any
    /// moment leaves either a checkpoint with its whole log or no checkpoint at all.
    fn save(&mut self, state: &mut TrainingState, run_json: &str) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        if let Some((config, lines)) = self.pending.take() {
            std::fs::create_dir_all(&self.dir).with_context(|| format!("cannot create {}", self.dir.display()))?;
            if self.replaces {
                for stale in CHECKPOINT_FILES.map(|f| self.dir.join(f)) {
                    if stale.exists() {
                        std::fs::remove_file(&stale).with_context(|| format!("cannot remove {}", stale.display()))?;
                    }
                }
            }
            // The settings first: a kill between the two leaves a folder that the same
            // command recognises as its own interrupted start, where a log alone would
            // read as another run's.
            crate::fsutil::write_atomic(&self.dir.join("config.json"), config.as_bytes())?;
            let log = self.dir.join("metrics.jsonl");
            crate::fsutil::write_atomic(&log, &lines)?;
            let f = std::fs::OpenOptions::new()
                .append(true)
                .open(&log)
                .with_context(|| format!("cannot open {}", log.display()))?;
            self.metrics = Some(f);
        }
        save(state, run_json, &self.checkpoint)?;
        self.last_good = Some(self.checkpoint.clone());
        Ok(())
    }

    /// What a stopped run says about its last good state.
    fn last_good_note(&self) -> String {
        match &self.last_good {
            Some(p) => format!("the last good checkpoint is {}", p.display()),
            None => "no checkpoint was written (the run stopped before its first epoch ended)".into(),
        }
    }
}

/// The run found in `dir`: the `run` settings of its `config.json` (`Null` when it has
/// none but holds other run files), or `None` when the folder holds no run.
fn run_in(dir: &Path) -> Option<serde_json::Value> {
    // Any of them makes a folder a run folder.
    if !LOG_FILES.iter().chain(&CHECKPOINT_FILES).any(|f| dir.join(f).exists()) {
        return None;
    }
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap_or_default();
    Some(
        serde_json::from_str::<serde_json::Value>(&text)
            .map(|v| v[RUN_KEY].clone())
            .unwrap_or(serde_json::Value::Null),
    )
}

/// Whether two runs' settings are the same run (the data may have moved since).
fn same_run(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    let without_data = |v: &serde_json::Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("data");
        }
        v
    };
    a.is_object() && without_data(a) == without_data(b)
}

/// Whether `dir` holds only the start of this same run, killed after writing its
/// settings and log but before its first checkpoint landed: nothing to keep, so the
/// same command starts it again without `--force`.
fn interrupted_start(dir: &Path, found: Option<&serde_json::Value>, run: &RunConfig) -> Result<bool> {
    let run = serde_json::to_value(run)?;
    let ours = found.is_some_and(|f| same_run(f, &run));
    Ok(ours && !CHECKPOINT_FILES.iter().any(|f| dir.join(f).exists()))
}

fn refuse_other_run(dir: &Path) -> Result<()> {
    bail!(
        "{} holds another run; choose another --out, or give --force to replace it (its files are \
         replaced once the new run has written its first checkpoint)",
        dir.display()
    )
}

/// The training run; in a data-parallel run (`cluster`), this rank's part of it. `data`
/// is the run's data when the caller has read it already (runs without a validation
/// split only); `note` adds a line to each epoch's.
fn train(
    args: TrainArgs,
    threads: usize,
    cluster: Option<&Cluster>,
    data: Option<Loaded>,
    note: Option<EpochNote>,
) -> Result<()> {
    let started = Instant::now();
    let (rank, ranks) = cluster.map_or((0, 1), |c| (c.rank(), c.size()));
    let root = rank == 0;
    let resumed = args
        .resume
        .as_ref()
        .map(|ckpt| resume_run(&args, ckpt, threads, root))
        .transpose()?;
    let (data_path, val, seed) = match &resumed {
        Some((_, run, _)) => (run.data.clone(), run.val, run.seed),
        None => (absolute(&data_arg(&args))?, args.val, args.seed),
    };
    let read;
    let (train_set, val_set, test_set) = match data {
        Some(d) if val == 0 => (d.train, None, d.test),
        _ => {
            read = split_data(&data_path, val, seed, args.quiet)?;
            (&read.0, read.1.as_ref(), &read.2)
        }
    };
    let (mut state, run, mut folder) = match resumed {
        Some(r) => r,
        None => new_run(&args, train_set, test_set, threads, root)?,
    };
    if run.precision == Precision::Bf16 {
        state.trainer.use_bf16()?;
    }
    if train_set.len() != run.train_images {
        bail!(
            "the data at {} has {} training images; the run was started with {}",
            run.data.display(),
            train_set.len(),
            run.train_images
        );
    }
    let run_json = serde_json::to_string(&run)?;
    let last = run.train_images % run.batch;
    if ranks > run.batch || (last != 0 && last < ranks) {
        bail!(
            "{ranks} ranks cannot share batches of {} images ({} training images leave a last batch of {last}): \
             every rank needs at least one image of every batch",
            run.batch,
            run.train_images
        );
    }
    #[cfg(feature = "mpi")]
    let mut parallel = match cluster {
        Some(c) => {
            let p = DataParallel::new(c, &state.classifier.params, !args.local_bn)?;
            p.share_state(&mut state)?;
            Some(p)
        }
        None => None,
    };

    let stop = stop_flag();

    let normalization = state.classifier.normalization.clone();
    let batcher = Batcher::train(
        train_set,
        &normalization,
        run.batch,
        run.seed,
        Some(Augment::paper()),
        false,
    )?;
    let bpe = batcher.batches_per_epoch() as u64;
    let epochs = run.total_iterations.div_ceil(bpe);
    let per_image = train_set.image_len();
    // This rank's largest share of a batch.
    let most = batch_share(run.batch, ranks, 0).len();
    let mut images = vec![0f32; most * per_image];
    let mut labels = vec![0u32; most];
    let mut best_error = best_so_far(&folder.metrics_text());
    let checkpoint_path = folder.checkpoint.clone();
    let (side_h, side_w) = (train_set.height, train_set.width);
    let mut window = (0f64, 0usize, 0usize); // loss sum, errors, images since the last log line
    let quiet = args.quiet || !root;
    if state.trainer.iteration >= run.total_iterations {
        if root {
            eprintln!(
                "the run in {} is complete ({} iterations); nothing to train",
                folder.dir.display(),
                run.total_iterations
            );
        }
        return Ok(());
    }
    let ranks_note = if ranks > 1 {
        format!(" x {ranks} ranks")
    } else {
        String::new()
    };
    if !quiet {
        eprintln!(
            "training {} on {} images ({} test{}), {} iterations = {epochs} epochs of {bpe}, batch {}, {threads} thread(s){ranks_note} -> {}",
            state.classifier.config().name,
            train_set.len(),
            test_set.len(),
            val_set.map_or(String::new(), |v| format!(", {} validation", v.len())),
            run.total_iterations,
            run.batch,
            folder.dir.display()
        );
    }
    let start_epoch = state.trainer.iteration / bpe;
    for epoch in start_epoch..epochs {
        let mut ep = batcher.epoch(epoch);
        if epoch == start_epoch {
            ep.seek((state.trainer.iteration % bpe) as usize);
        }
        let in_epoch = (bpe.min(run.total_iterations - epoch * bpe)) as usize;
        let bar = progress_bar(in_epoch, &format!("epoch {}/{epochs}", epoch + 1), quiet);
        bar.set_position(state.trainer.iteration % bpe);
        let epoch_start = Instant::now();
        let mut epoch_images = 0usize;
        while state.trainer.iteration < run.total_iterations {
            let Some((n, whole)) = ep.next_share_into(ranks, rank, &mut images, &mut labels)? else {
                break;
            };
            let x = Tensor::new(vec![n, 3, side_h, side_w], images[..n * per_image].to_vec())?;
            let asked = stop.load(Ordering::SeqCst);
            #[cfg(feature = "mpi")]
            let result = match parallel.as_mut() {
                Some(p) => p.step(&mut state, &x, &labels[..n], whole, asked),
                None => state.step(&x, &labels[..n]).map(|s| (s, asked)),
            };
            #[cfg(not(feature = "mpi"))]
            let result = state.step(&x, &labels[..n]).map(|s| (s, asked));
            let (stats, stop_now) = match result {
                Ok(s) => s,
                Err(e @ Error::Diverged { .. }) => {
                    bar.abandon();
                    let message = format!("{e}; stopping: {}", folder.last_good_note());
                    if cluster.is_some() {
                        return Err(AllRanks { code: 1, message }.into());
                    }
                    bail!(message);
                }
                Err(e) => return Err(e.into()),
            };
            epoch_images += whole;
            window.0 += stats.loss * whole as f64;
            window.1 += ((1.0 - stats.accuracy) * whole as f64).round() as usize;
            window.2 += whole;
            let it = state.trainer.iteration;
            if it % LOG_EVERY == 0 {
                let line = serde_json::json!({
                    "kind": "train", "iteration": it, "epoch": it as f64 / bpe as f64, "lr": stats.lr,
                    "loss": window.0 / window.2 as f64, "error": window.1 as f64 / window.2 as f64,
                });
                folder.log(&line)?;
                let rate = epoch_images as f64 / epoch_start.elapsed().as_secs_f64();
                bar.set_message(format!(
                    "epoch {}/{epochs} loss {:.3} err {:.1}% {rate:.0} img/s",
                    epoch + 1,
                    window.0 / window.2 as f64,
                    100.0 * window.1 as f64 / window.2 as f64
                ));
                if args.quiet && root {
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
            if stop_now {
                bar.abandon();
                folder.save(&mut state, &run_json)?;
                if root {
                    eprintln!(
                        "interrupted at iteration {}: saved {}; continue with --resume {}",
                        state.trainer.iteration,
                        checkpoint_path.display(),
                        checkpoint_path.display()
                    );
                }
                if cluster.is_some() {
                    return Err(AllRanks {
                        code: 130,
                        message: String::new(),
                    }
                    .into());
                }
                std::process::exit(130);
            }
        }
        bar.finish_and_clear();
        let train_rate = epoch_images as f64 / epoch_start.elapsed().as_secs_f64();
        if root {
            end_epoch(EpochEnd {
                args: &args,
                state: &mut state,
                folder: &mut folder,
                run: &run,
                run_json: &run_json,
                test_set,
                val_set,
                note,
                best_error: &mut best_error,
                epoch,
                epochs,
                train_rate,
                started,
            })?;
        }
        if args.until_epoch == Some(epoch + 1) && state.trainer.iteration < run.total_iterations {
            if root {
                eprintln!(
                    "stopping after epoch {} as asked; continue with --resume {}",
                    epoch + 1,
                    checkpoint_path.display()
                );
            }
            return Ok(());
        }
    }
    Ok(())
}

/// What the end of an epoch reads and writes.
struct EpochEnd<'a> {
    args: &'a TrainArgs,
    state: &'a mut TrainingState,
    folder: &'a mut RunFolder,
    run: &'a RunConfig,
    run_json: &'a str,
    test_set: &'a Dataset,
    val_set: Option<&'a Dataset>,
    note: Option<EpochNote<'a>>,
    best_error: &'a mut f64,
    epoch: u64,
    epochs: u64,
    train_rate: f64,
    started: Instant,
}

/// The end of an epoch: evaluation, the epoch's log line, the checkpoint, the best
/// weights and the curves.
fn end_epoch(e: EpochEnd) -> Result<()> {
    let EpochEnd {
        args,
        state,
        folder,
        run,
        run_json,
        test_set,
        val_set,
        note,
        best_error,
        epoch,
        epochs,
        train_rate,
        started,
    } = e;
    let view = &mut state.classifier;
    let test = view.evaluate(test_set, args.eval_batch, &mut |_, _| {})?;
    let test_error = 1.0 - test.top1 as f64 / test.total.max(1) as f64;
    let val_error = match val_set {
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
    folder.log(&line)?;
    folder.save(state, run_json)?;
    let selection_error = val_error.unwrap_or(test_error);
    if selection_error < *best_error {
        *best_error = selection_error;
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
        let written = write_best(view, &folder.dir.join("best.safetensors"));
        view.metadata.remove("training");
        written?;
    }
    write_run_curves(&folder.dir, &state.classifier.config().name)?;
    eprintln!(
        "epoch {}/{epochs}: iteration {}, test error {:.2}%{}, {train_rate:.0} train images/s, {:.0} s",
        epoch + 1,
        state.trainer.iteration,
        100.0 * test_error,
        val_error.map_or(String::new(), |e| format!(", validation error {:.2}%", 100.0 * e)),
        started.elapsed().as_secs_f64()
    );
    let report = EpochReport {
        iteration: state.trainer.iteration,
        total_iterations: run.total_iterations,
        seconds_per_iteration: run.batch as f64 / train_rate,
    };
    if let Some(line) = note.and_then(|n| n(&report)) {
        eprintln!("{line}");
    }
    Ok(())
}

/// The `--data` path, or the default.
fn data_arg(args: &TrainArgs) -> PathBuf {
    args.data
        .clone()
        .unwrap_or_else(|| PathBuf::from("data/cifar-10-batches-bin"))
}

/// `path` made absolute (stored in the run, so that a resume from another folder finds it).
fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))
}

/// A fresh run from the command line's settings.
fn new_run(
    args: &TrainArgs,
    train: &Dataset,
    test: &Dataset,
    threads: usize,
    writer: bool,
) -> Result<(TrainingState, RunConfig, RunFolder)> {
    let model = args.model.clone().unwrap_or_else(|| "resnet20".into());
    let config = ResNetConfig::named(&model)?;
    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(&model));
    let run = run_config(args, model, &config, train, test)?;
    let found = run_in(&out);
    if writer && found.is_some() && !args.force && !interrupted_start(&out, found.as_ref(), &run)? {
        refuse_other_run(&out)?;
    }
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
        trainer: Trainer::new(Sgd::new(args.momentum, args.weight_decay), run.schedule.clone()),
    };
    if !writer {
        return Ok((state, run, RunFolder::disabled(out)));
    }
    let config_json = config_json(&run, threads, &state)?;
    let replaces = found.is_some();
    Ok((
        state,
        run,
        RunFolder::deferred(out, config_json, Vec::new(), None, replaces),
    ))
}

/// The settings of a new run of `model` from the command line's arguments.
fn run_config(
    args: &TrainArgs,
    model: String,
    config: &ResNetConfig,
    train: &Dataset,
    test: &Dataset,
) -> Result<RunConfig> {
    if args.batch > train.len() {
        bail!(
            "--batch {} is larger than the training set ({} images)",
            args.batch,
            train.len()
        );
    }
    let bpe = train.len().div_ceil(args.batch) as u64;
    let total = match (args.epochs, args.iters) {
        (Some(e), _) => e
            .checked_mul(bpe)
            .with_context(|| format!("--epochs {e} of {bpe} iterations is more iterations than can be counted"))?,
        (None, Some(i)) => i,
        (None, None) => PAPER_ITERATIONS,
    };
    Ok(RunConfig {
        model,
        data: absolute(&data_arg(args))?,
        batch: args.batch,
        total_iterations: total,
        seed: args.seed,
        val: args.val,
        normalize: args.normalize,
        schedule: schedule_for(args, config, total),
        momentum: args.momentum,
        weight_decay: args.weight_decay,
        precision: args.precision,
        train_images: train.len(),
        test_images: test.len(),
        batches_per_epoch: bpe as usize,
    })
}

fn config_json(run: &RunConfig, threads: usize, state: &TrainingState) -> Result<String> {
    Ok(serde_json::to_string_pretty(
        &serde_json::json!({ "run": run, "threads": threads, "model": state.classifier.config() }),
    )?)
}

/// A run continued from a checkpoint, with the settings stored in it. In the
/// checkpoint's own run folder the run continues in place; a folder given with `--out`
/// that holds another run is refused without `--force`.
fn resume_run(
    args: &TrainArgs,
    ckpt: &Path,
    threads: usize,
    writer: bool,
) -> Result<(TrainingState, RunConfig, RunFolder)> {
    let bytes = std::fs::read(ckpt).with_context(|| format!("cannot read {}", ckpt.display()))?;
    let mut state =
        TrainingState::from_bytes(&bytes).with_context(|| format!("cannot resume from {}", ckpt.display()))?;
    let run_json = state
        .classifier
        .metadata
        .remove(RUN_KEY)
        .context("the checkpoint has no run settings")?;
    let mut run: RunConfig = serde_json::from_str(&run_json).context("the checkpoint's run settings are invalid")?;
    let own = ckpt
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let out = args.out.clone().unwrap_or_else(|| own.clone());
    let run_value = serde_json::to_value(&run)?;
    let iteration = state.trainer.iteration;
    // The data may have moved since the run started; --data says where it is now.
    if let Some(data) = &args.data {
        run.data = absolute(data)?;
    }
    if !writer {
        return Ok((state, run, RunFolder::disabled(out)));
    }
    let same_folder = match (std::fs::canonicalize(&out), std::fs::canonicalize(&own)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    let found = run_in(&out);
    // The checkpoint's own folder holds its run, also without its config.json (runs
    // from before the log and settings were written ahead of the first checkpoint).
    let ours = same_folder && found.as_ref().is_none_or(|f| f.is_null() || same_run(f, &run_value));
    let folder = if ours && out.join("config.json").is_file() && out.join("metrics.jsonl").is_file() {
        RunFolder::continued(out, iteration, ckpt.to_path_buf())?
    } else if ours {
        let lines = kept_metrics(
            &std::fs::read_to_string(out.join("metrics.jsonl")).unwrap_or_default(),
            iteration,
        );
        let config = config_json(&run, threads, &state)?;
        RunFolder::deferred(out, config, lines.into_bytes(), Some(ckpt.to_path_buf()), false)
    } else if found.is_some() && !args.force {
        return Err(refuse_other_run(&out).unwrap_err());
    } else {
        // A new folder for this run: its log starts with the lines of the run's own
        // folder up to the checkpoint.
        let lines = match run_in(&own) {
            Some(f) if same_run(&f, &run_value) => kept_metrics(
                &std::fs::read_to_string(own.join("metrics.jsonl")).unwrap_or_default(),
                iteration,
            ),
            _ => String::new(),
        };
        let config = config_json(&run, threads, &state)?;
        RunFolder::deferred(
            out,
            config,
            lines.into_bytes(),
            Some(ckpt.to_path_buf()),
            found.is_some(),
        )
    };
    Ok((state, run, folder))
}

fn save(state: &mut TrainingState, run_json: &str, path: &Path) -> Result<()> {
    state.classifier.metadata.insert(RUN_KEY.into(), run_json.to_string());
    let bytes = state.to_bytes();
    state.classifier.metadata.remove(RUN_KEY);
    let bytes = bytes?;
    crate::fsutil::write_atomic(path, &bytes)?;
    Ok(())
}

fn write_best(view: &mut Classifier, path: &Path) -> Result<()> {
    let bytes = view.to_safetensors()?;
    crate::fsutil::write_atomic(path, &bytes)?;
    Ok(())
}

/// The lowest selection error (validation, else test) of the epochs in the log `text`,
/// so that a resumed run only replaces `best.safetensors` with something better.
fn best_so_far(text: &str) -> f64 {
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "epoch")
        .filter_map(|v| v["val_error"].as_f64().or_else(|| v["test_error"].as_f64()))
        .fold(f64::INFINITY, f64::min)
}

/// The lines of a log up to `iteration` (those after it were written after the
/// checkpoint a run resumes from).
fn kept_metrics(text: &str, iteration: u64) -> String {
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
    out
}

/// Drops metric lines past `iteration` from the log at `path`.
fn truncate_metrics(path: &Path, iteration: u64) -> Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    crate::fsutil::write_atomic(path, kept_metrics(&text, iteration).as_bytes())?;
    Ok(())
}
