//! Data-parallel `resnet train` over MPI (cargo feature `mpi`, launched by `mpirun`).
//!
//! Every rank reads the same data with the same seed and computes its share of every
//! global batch ([`batch_share`](resnet_core::data::augment::batch_share), the rule the
//! page's Web Workers use). During the backward pass the gradients are packed, in the
//! order the pass finishes them, into one preallocated buffer and summed across ranks by
//! non-blocking allreduces of about [`BUCKET_BYTES`] each, launched as soon as a bucket
//! is full, so that the network works while the pass goes on (as PyTorch DDP and Horovod
//! do). Each rank's gradients are already scaled by its share of the global batch
//! ([`Trainer::compute_share_gradients`]), so the sum is the global batch's mean
//! gradient. With synchronised batch norm (the default) every training batch norm
//! gathers the ranks' moments and backward sums, so that N ranks compute what one
//! process computes on the global batch.
//!
//! Every wait is bounded: a collective that does not complete within the run's timeout
//! (a rank died or hangs) ends this rank with an error naming what it waited for, and
//! `MPI_Abort` ends the others; a rank that dies outright is reported by `mpirun`, which
//! ends the job.
//!
//! The collectives are called through `mpi::ffi` (the C API) rather than the `mpi`
//! crate's scoped requests, because a bucket's request outlives the hook call that
//! started it; the buffers they read and write are fields of [`DataParallel`] that are
//! never resized after it is made, and no request outlives it (see its `Drop`).

use crate::train::AllRanks;
use anyhow::{bail, Result};
use mpi::ffi;
use mpi::traits::Communicator;
use resnet_core::plan::StepHooks;
use resnet_core::train::checkpoint::TrainingState;
use resnet_core::train::trainer::{check_params, MAX_LOSS};
use resnet_core::train::StepStats;
use resnet_core::{Error, Params, Tensor};
use std::ops::Range;
use std::os::raw::{c_int, c_void};
use std::time::{Duration, Instant};

/// Bytes of gradients per allreduce: about 0.2 ms of a 10 Gbit/s link, long against the
/// tens of microseconds a message costs over TCP, and small enough that ResNet-20's
/// 1.1 MB of gradients make four buckets, the first three sent while backward runs.
pub const BUCKET_BYTES: usize = 256 << 10;

/// Whether this process was started by an MPI launcher (`mpirun`, `srun` with PMIx):
/// then `resnet train` joins the job as one rank of a data-parallel run.
pub fn launched() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
}

/// This process's place in the MPI job. MPI is finalised when it is dropped.
pub struct Cluster {
    universe: Option<mpi::environment::Universe>,
    rank: usize,
    size: usize,
    timeout: Duration,
}

impl Cluster {
    /// Joins the MPI job. `timeout` bounds every wait for the other ranks.
    pub fn init(timeout: Duration) -> Result<Cluster> {
        // The training loop runs on a rayon worker thread, not the thread that initialises
        // MPI; only one thread calls MPI at a time.
        let Some((universe, threading)) = mpi::initialize_with_threading(mpi::Threading::Serialized) else {
            bail!("MPI was already initialised");
        };
        if threading < mpi::Threading::Serialized {
            bail!("the MPI library offers thread level {threading:?}; data-parallel training needs Serialized");
        }
        let world = universe.world();
        Ok(Cluster {
            rank: world.rank() as usize,
            size: world.size() as usize,
            universe: Some(universe),
            timeout,
        })
    }

    /// This process's rank, 0 to `size - 1`.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The number of ranks.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Whether this rank writes the run's files and prints its progress.
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    /// Ends the job: `MPI_Abort` takes every rank down (used when this rank cannot go on
    /// and the others would otherwise wait for it).
    pub fn abort(&self, message: &str) -> ! {
        eprintln!("error: rank {} of {}: {message}", self.rank, self.size);
        let world = self.universe.as_ref().expect("MPI is initialised").world();
        world.abort(1)
    }

    /// How the rank ends after `train` returned `result`: errors that every rank met at
    /// the same step end every rank with their code after MPI is finalised (rank 0 alone
    /// reports them); any other error is this rank's alone, and ends the whole job.
    pub fn finish(mut self, result: Result<()>) -> Result<()> {
        let Err(e) = result else {
            drop(self.universe.take());
            return Ok(());
        };
        let Some(ending) = e.downcast_ref::<AllRanks>() else {
            self.abort(&format!("{e:#}"));
        };
        let (code, root, says) = (ending.code, self.is_root(), !ending.message.is_empty());
        drop(self.universe.take());
        if root && says {
            eprintln!("error: {e:#}");
        }
        std::process::exit(code.into());
    }

    fn world() -> ffi::MPI_Comm {
        // SAFETY: a constant of the C library, initialised before MPI_Init returned.
        unsafe { ffi::RSMPI_COMM_WORLD }
    }

    /// Waits for `requests` to complete, polling (so that MPI progresses them) until
    /// they have or the timeout has passed; then the job ends with an error naming `what`.
    fn wait(&self, requests: &mut [ffi::MPI_Request], what: &str) {
        let start = Instant::now();
        loop {
            let mut done: c_int = 0;
            // SAFETY: `requests` are live requests (or null ones) of this process; the
            // buffers they use are kept alive and unmoved by their owners until this
            // returns.
            unsafe {
                ffi::MPI_Testall(
                    requests.len() as c_int,
                    requests.as_mut_ptr(),
                    &mut done,
                    ffi::RSMPI_STATUSES_IGNORE,
                );
            }
            if done != 0 {
                return;
            }
            let waited = start.elapsed();
            if waited > self.timeout {
                self.abort(&format!(
                    "no answer from the other ranks for {:.0} s while {what} (--mpi-timeout); a rank died, \
                     hangs or cannot be reached",
                    waited.as_secs_f64()
                ));
            }
            if waited < Duration::from_millis(20) {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
    }

    /// Lets MPI progress `requests` without waiting for them.
    fn progress(requests: &mut [ffi::MPI_Request]) {
        if requests.is_empty() {
            return;
        }
        let mut done: c_int = 0;
        // SAFETY: as in `wait`; a completed set becomes null requests, which later
        // tests and waits accept.
        unsafe {
            ffi::MPI_Testall(
                requests.len() as c_int,
                requests.as_mut_ptr(),
                &mut done,
                ffi::RSMPI_STATUSES_IGNORE,
            );
        }
    }

    /// Rank 0's `values` in every rank.
    pub fn broadcast(&self, values: &mut [f32], what: &str) {
        // SAFETY: the C type of f32.
        self.broadcast_raw(values, unsafe { ffi::RSMPI_FLOAT }, what);
    }

    /// Rank 0's `values` in every rank.
    pub fn broadcast_u64(&self, values: &mut [u64], what: &str) {
        // SAFETY: the C type of u64.
        self.broadcast_raw(values, unsafe { ffi::RSMPI_UINT64_T }, what);
    }

    /// Rank 0's `values` in every rank, `datatype` being the C type of `T`.
    fn broadcast_raw<T>(&self, values: &mut [T], datatype: ffi::MPI_Datatype, what: &str) {
        let mut requests = Vec::new();
        for chunk in values.chunks_mut(i32::MAX as usize) {
            let mut r = null_request();
            // SAFETY: `chunk` stays borrowed, unmoved, until `wait` returns; its
            // elements are of `datatype` (the callers pair them).
            unsafe {
                ffi::MPI_Ibcast(
                    chunk.as_mut_ptr() as *mut c_void,
                    chunk.len() as c_int,
                    datatype,
                    0,
                    Self::world(),
                    &mut r,
                );
            }
            requests.push(r);
        }
        self.wait(&mut requests, &format!("receiving {what} from rank 0"));
    }

    /// Every rank's `send` (all of the same length), one after another in rank order.
    fn all_gather(&self, send: &[f64], out: &mut Vec<f64>, what: &str) {
        out.resize(send.len() * self.size, 0.0);
        let mut r = null_request();
        // SAFETY: `send` and `out` stay borrowed, unmoved, until `wait` returns; `out`
        // holds `size` times `send`.
        unsafe {
            ffi::MPI_Iallgather(
                send.as_ptr() as *const c_void,
                send.len() as c_int,
                ffi::RSMPI_DOUBLE,
                out.as_mut_ptr() as *mut c_void,
                send.len() as c_int,
                ffi::RSMPI_DOUBLE,
                Self::world(),
                &mut r,
            );
        }
        self.wait(&mut [r], what);
    }
}

fn null_request() -> ffi::MPI_Request {
    // SAFETY: a constant of the C library.
    unsafe { ffi::RSMPI_REQUEST_NULL }
}

/// The data-parallel side of a training run: the gradient buckets, the batch-norm
/// synchronisation and the step's agreement on loss, interruption and divergence.
pub struct DataParallel<'a> {
    cluster: &'a Cluster,
    sync_bn: bool,
    /// Gradients packed in the order the backward pass finishes them, and their sums.
    send: Vec<f32>,
    recv: Vec<f32>,
    /// Where each finished tensor lies in the flat gradients and in `send`.
    placed: Vec<(Range<usize>, usize)>,
    filled: usize,
    launched: usize,
    requests: Vec<ffi::MPI_Request>,
    /// One rank's batch-norm statistics and every rank's.
    local: Vec<f64>,
    gathered: Vec<f64>,
}

impl<'a> DataParallel<'a> {
    /// Buffers for the gradients of `params`; `sync_bn` synchronises batch norm.
    pub fn new(cluster: &'a Cluster, params: &Params, sync_bn: bool) -> Result<Self> {
        let len = params.param_count();
        let tensors = params.entries().len();
        Ok(DataParallel {
            cluster,
            sync_bn,
            send: vec![0.0; len],
            recv: vec![0.0; len],
            placed: Vec::with_capacity(tensors),
            filled: 0,
            launched: 0,
            requests: Vec::with_capacity(len.div_ceil(BUCKET_BYTES / 4) + 1),
            local: Vec::new(),
            gathered: Vec::new(),
        })
    }

    /// Makes every rank start from rank 0's weights, statistics and optimizer state, and
    /// checks that all ranks are at the same iteration.
    pub fn share_state(&self, state: &mut TrainingState) -> Result<()> {
        let mut it = [state.trainer.iteration];
        self.cluster.broadcast_u64(&mut it, "the iteration");
        let root_it = it[0];
        if root_it != state.trainer.iteration {
            bail!(
                "rank 0 is at iteration {root_it}, rank {} at {}: every rank must start from the same checkpoint",
                self.cluster.rank(),
                state.trainer.iteration
            );
        }
        let params = &mut state.classifier.params;
        self.cluster.broadcast(params.values_mut(), "the weights");
        self.cluster.broadcast(params.buffers_mut(), "the running statistics");
        let velocity = &mut state.trainer.sgd.velocity;
        if !velocity.is_empty() {
            self.cluster.broadcast(velocity, "the optimizer state");
        }
        Ok(())
    }

    /// One training step of this rank's `images` and `labels`, a share of a global batch
    /// of `global` images: forward and backward with the gradients summed across ranks
    /// during backward, the update, then one agreement of all ranks on the step's loss
    /// and accuracy (over the global batch), on whether any rank was asked to stop
    /// (`stop`), and on divergence, which ends every rank with `Error::Diverged`.
    /// Returns the global batch's statistics and whether to stop after this step.
    pub fn step(
        &mut self,
        state: &mut TrainingState,
        images: &Tensor,
        labels: &[u32],
        global: usize,
        stop: bool,
    ) -> resnet_core::Result<(StepStats, bool)> {
        let iteration = state.trainer.iteration;
        let params = &mut state.classifier.params;
        let (loss, correct) = state
            .trainer
            .compute_share_gradients(params, images, labels, global, self)?;
        self.finish_gradients(params)?;
        let lr = state.trainer.apply_gradients(params);
        let bad_params = check_params(params, iteration).err();
        let n = labels.len() as f64;
        let mut agreed = [
            loss * n,
            correct as f64,
            n,
            f64::from(u8::from(stop)),
            f64::from(u8::from(bad_params.is_some())),
        ];
        self.all_reduce_small(&mut agreed, "agreeing on the step's loss");
        let [loss_sum, correct, count, stops, bad] = agreed;
        let loss = loss_sum / count.max(1.0);
        // NaN-aware: NaN is not finite.
        if !loss.is_finite() || loss > MAX_LOSS {
            return Err(Error::Diverged {
                iteration,
                what: format!("the loss is {loss} (the limit is {MAX_LOSS})"),
            });
        }
        if let Some(e) = bad_params {
            return Err(e);
        }
        if bad > 0.0 {
            return Err(Error::Diverged {
                iteration,
                what: "a weight or batch-norm statistic of another rank is not finite or too large".into(),
            });
        }
        let stats = StepStats {
            iteration,
            loss,
            accuracy: correct / count.max(1.0),
            lr,
        };
        Ok((stats, stops > 0.0))
    }

    /// Sums `values` across ranks, in rank order on every rank.
    fn all_reduce_small(&mut self, values: &mut [f64], what: &str) {
        self.local.clear();
        self.local.extend_from_slice(values);
        self.cluster.all_gather(&self.local, &mut self.gathered, what);
        values.fill(0.0);
        for part in self.gathered.chunks(values.len()) {
            values.iter_mut().zip(part).for_each(|(v, p)| *v += p);
        }
    }

    /// Starts the allreduce of the packed gradients not yet sent.
    fn launch(&mut self) {
        let range = self.launched..self.filled;
        if range.is_empty() {
            return;
        }
        if range.len() > i32::MAX as usize {
            self.cluster.abort("a gradient bucket of more than 2^31 values");
        }
        let mut r = null_request();
        // SAFETY: `send` and `recv` are never resized after `new`, and every request is
        // waited for (`finish_gradients`, `Drop`) before they are read or dropped.
        unsafe {
            ffi::MPI_Iallreduce(
                self.send[range.clone()].as_ptr() as *const c_void,
                self.recv[range.clone()].as_mut_ptr() as *mut c_void,
                range.len() as c_int,
                ffi::RSMPI_FLOAT,
                ffi::RSMPI_SUM,
                Cluster::world(),
                &mut r,
            );
        }
        self.requests.push(r);
        self.launched = self.filled;
    }

    /// Sends what backward has not yet sent, waits for every bucket, and writes the sums
    /// into the gradients of `params`.
    fn finish_gradients(&mut self, params: &mut Params) -> resnet_core::Result<()> {
        self.launch();
        self.cluster.wait(&mut self.requests, "summing the gradients");
        self.requests.clear();
        let grads = params.grads_mut();
        if self.filled != grads.len() {
            return Err(Error::Config(format!(
                "the backward pass finished {} of {} gradients",
                self.filled,
                grads.len()
            )));
        }
        for (range, at) in self.placed.drain(..) {
            grads[range.clone()].copy_from_slice(&self.recv[at..at + range.len()]);
        }
        self.filled = 0;
        self.launched = 0;
        Ok(())
    }

    /// Gathers one batch norm's `(count, a, b)` of every rank into `gathered`.
    fn gather_stats(&mut self, count: f64, a: &[f64], b: &[f64], what: &str) {
        self.local.clear();
        self.local.push(count);
        self.local.extend_from_slice(a);
        self.local.extend_from_slice(b);
        self.cluster.all_gather(&self.local, &mut self.gathered, what);
    }
}

impl StepHooks for DataParallel<'_> {
    fn batch_moments(&mut self, count: f64, mean: &mut [f64], var: &mut [f64]) -> f64 {
        if !self.sync_bn {
            return count;
        }
        let c = mean.len();
        self.gather_stats(count, mean, var, "gathering batch-norm statistics");
        let ranks = || self.gathered.chunks(2 * c + 1);
        let total: f64 = ranks().map(|r| r[0]).sum();
        let n = total.max(1.0);
        for ch in 0..c {
            mean[ch] = ranks().map(|r| r[0] * r[1 + ch]).sum::<f64>() / n;
        }
        // Chan et al.'s parallel variance: the ranks' spreads plus their means' spread.
        for ch in 0..c {
            var[ch] = ranks()
                .map(|r| {
                    let d = r[1 + ch] - mean[ch];
                    r[0] * (r[1 + c + ch] + d * d)
                })
                .sum::<f64>()
                / n;
        }
        total
    }

    fn grad_sums(&mut self, count: f64, sum_dy: &mut [f64], sum_dy_zc: &mut [f64]) -> f64 {
        if !self.sync_bn {
            return count;
        }
        let c = sum_dy.len();
        self.gather_stats(count, sum_dy, sum_dy_zc, "gathering batch-norm gradients");
        sum_dy.fill(0.0);
        sum_dy_zc.fill(0.0);
        let mut total = 0.0;
        for r in self.gathered.chunks(2 * c + 1) {
            total += r[0];
            sum_dy.iter_mut().zip(&r[1..1 + c]).for_each(|(s, v)| *s += v);
            sum_dy_zc.iter_mut().zip(&r[1 + c..]).for_each(|(s, v)| *s += v);
        }
        total
    }

    fn grads_final(&mut self, grads: &[f32], range: Range<usize>) {
        let at = self.filled;
        self.send[at..at + range.len()].copy_from_slice(&grads[range.clone()]);
        self.filled += range.len();
        self.placed.push((range, at));
        if (self.filled - self.launched) * std::mem::size_of::<f32>() >= BUCKET_BYTES {
            self.launch();
        }
        // MPI moves non-blocking collectives forward only inside MPI calls.
        Cluster::progress(&mut self.requests);
    }
}

impl Drop for DataParallel<'_> {
    fn drop(&mut self) {
        // A step that failed half-way may leave buckets in flight: their buffers must
        // outlive them.
        if !self.requests.is_empty() {
            self.cluster.wait(&mut self.requests, "finishing the last gradients");
            self.requests.clear();
        }
    }
}

/// Arguments of `resnet mpi-bench`.
#[derive(clap::Args)]
pub struct MpiBenchArgs {
    /// Smallest message in bytes (rounded down to whole f32 values).
    #[arg(long, default_value_t = 4 << 10)]
    min_bytes: usize,
    /// Largest message in bytes; sizes go up by factors of 4.
    #[arg(long, default_value_t = 64 << 20)]
    max_bytes: usize,
    /// Seconds to spend on each size (at least 3 allreduces after one warm-up).
    #[arg(long, default_value_t = 0.5)]
    seconds: f64,
    /// Print JSON lines.
    #[arg(long)]
    json: bool,
}

/// `resnet mpi-bench` under `mpirun`: the time of one allreduce (sum of f32) of each
/// size across all ranks, made and waited for as training makes them (non-blocking, then
/// polled), the slowest rank's mean; rank 0 prints it with the algorithm bandwidth
/// (bytes / time) and the bus bandwidth (2 (N-1) / N bytes / time, what each link of a
/// ring carries).
pub fn bench(args: MpiBenchArgs) -> Result<()> {
    if !launched() {
        bail!("resnet mpi-bench runs under mpirun (mpirun -np 2 resnet mpi-bench)");
    }
    if args.min_bytes < 4 || args.min_bytes > args.max_bytes || args.max_bytes > 1 << 31 {
        bail!(
            "need 4 <= --min-bytes <= --max-bytes <= 2^31, found {} and {}",
            args.min_bytes,
            args.max_bytes
        );
    }
    if !(args.seconds.is_finite() && args.seconds > 0.0) {
        bail!("--seconds must be positive, found {}", args.seconds);
    }
    let cluster = Cluster::init(Duration::from_secs(120))?;
    let n = cluster.size();
    let send = vec![1.0f32; args.max_bytes / 4];
    let mut recv = vec![0.0f32; send.len()];
    let mut bytes = args.min_bytes / 4 * 4;
    if cluster.is_root() && !args.json {
        println!("{n} ranks; allreduce (sum of f32), the slowest rank's mean");
        println!(
            "{:>12} {:>12} {:>6} {:>12} {:>12}",
            "bytes", "us", "reps", "algbw GB/s", "busbw GB/s"
        );
    }
    while bytes <= args.max_bytes {
        let len = bytes / 4;
        // Agree on a repetition count from one timed call (rank 0's).
        let mut once = [0.0f64];
        let start = Instant::now();
        allreduce_once(&cluster, &send[..len], &mut recv[..len]);
        once[0] = start.elapsed().as_secs_f64();
        let mut gathered = Vec::new();
        cluster.all_gather(&once, &mut gathered, "timing an allreduce");
        let slowest = gathered.iter().cloned().fold(0.0, f64::max).max(1e-7);
        let reps = ((args.seconds / slowest) as usize).clamp(3, 100_000);
        let start = Instant::now();
        for _ in 0..reps {
            allreduce_once(&cluster, &send[..len], &mut recv[..len]);
        }
        let mean = [start.elapsed().as_secs_f64() / reps as f64];
        cluster.all_gather(&mean, &mut gathered, "timing an allreduce");
        let t = gathered.iter().cloned().fold(0.0, f64::max);
        if cluster.is_root() {
            let alg = bytes as f64 / t / 1e9;
            let bus = alg * 2.0 * (n as f64 - 1.0) / n as f64;
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"ranks": n, "bytes": bytes, "seconds": t, "reps": reps,
                        "algbw_gb_s": alg, "busbw_gb_s": bus})
                );
            } else {
                println!("{bytes:>12} {:>12.1} {reps:>6} {alg:>12.3} {bus:>12.3}", t * 1e6);
            }
        }
        bytes *= 4;
    }
    drop(cluster);
    Ok(())
}

/// One allreduce of `send` into `recv`, as training makes them.
fn allreduce_once(cluster: &Cluster, send: &[f32], recv: &mut [f32]) {
    let mut r = null_request();
    // SAFETY: `send` and `recv` stay borrowed, unmoved, until `wait` returns; both hold
    // `send.len()` (< 2^31) values.
    unsafe {
        ffi::MPI_Iallreduce(
            send.as_ptr() as *const c_void,
            recv.as_mut_ptr() as *mut c_void,
            send.len() as c_int,
            ffi::RSMPI_FLOAT,
            ffi::RSMPI_SUM,
            Cluster::world(),
            &mut r,
        );
    }
    cluster.wait(&mut [r], "an allreduce");
}
