//! The one rule by which the blocked kernels cut a call into parallel tasks: a fixed
//! number of contiguous, nearly equal parts, decided by the unit count and the thread
//! count alone. Fixed chunks (never work-stealing order) keep reductions over parts
//! deterministic for a given thread count.
//!
//! # Teams
//! A network call is tens of layers, and at batch 1 a layer is 10-40 us of work: a rayon
//! fork-join per layer (about 1-2 us natively, more in wasm, where idle Workers sleep on
//! `Atomics.wait`) weighs as much as the work it shares. [`team`] runs one call with the
//! pool's other threads spinning beside it: a parallel loop inside publishes its tasks in
//! one atomic word, every thread of the team claims tasks from it, and the caller waits
//! for the last one. Which thread runs a task never changes what the task computes, so
//! results are the same with or without a team.

use rayon::prelude::*;
use std::cell::Cell;
use std::ops::Range;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// Tasks per thread. One: each thread takes one contiguous part and the threads meet once.
/// Two (slack for a thread slowed by another tenant) measured no better at large batches
/// and worse at batch 1, where a call is tens of microseconds and every extra task a
/// handover (2 threads, interleaved, ms, one against two: resnet20 b1 0.12-0.13 against
/// 0.14-0.15, resnet50 b1 15.7-16.2 against 16.1-16.5, resnet20 b128 and resnet50 b8
/// inference and resnet20 b128 and resnet50 b16 training within 1 %; in Chromium, the
/// threaded wasm build's resnet20 b1 0.54-0.55 against 0.57-0.67).
pub const TASKS_PER_THREAD: usize = 1;

/// How many tasks to cut `units` independent units of work into.
pub fn parts(units: usize) -> usize {
    (rayon::current_num_threads() * TASKS_PER_THREAD).clamp(1, units.max(1))
}

/// `0..total` cut into `parts` contiguous ranges whose sizes differ by at most one;
/// empty ranges are left out.
pub fn ranges(total: usize, parts: usize) -> impl Iterator<Item = Range<usize>> + Clone {
    let parts = parts.clamp(1, total.max(1));
    (0..parts)
        .map(move |p| (p * total / parts)..((p + 1) * total / parts))
        .filter(|r| !r.is_empty())
}

/// Runs `f` on each of the [`parts`] ranges of `0..units` (as [`ranges`] cuts them), in
/// parallel.
pub fn for_each_range(units: usize, f: impl Fn(Range<usize>) + Send + Sync) {
    let parts = parts(units);
    for_each_task(parts, |task| {
        if let Some(range) = ranges(units, parts).nth(task) {
            f(range);
        }
    });
}

/// Runs `f(task)` for every task of `0..tasks`, in parallel: on the calling thread's
/// [`team`] when it has one, else as rayon tasks.
pub fn for_each_task(tasks: usize, f: impl Fn(usize) + Send + Sync) {
    match TEAM.get() {
        // SAFETY: `TEAM` points at the team of a `team` call that is still running on this
        // thread (it is reset before that call returns).
        Some(team) if tasks > 1 && tasks as u64 <= MAX_TEAM_TASKS => unsafe { (*team).run(tasks, &f) },
        _ => (0..tasks).into_par_iter().for_each(f),
    }
}

/// Runs `f` (one call into the engine) with the current rayon pool's other threads
/// serving its parallel loops (see the module's doc) until it returns. Outside a pool, in
/// a pool of one thread, or inside another team's call, it just runs `f`.
pub fn team<R>(f: impl FnOnce() -> R) -> R {
    let me = match rayon::current_thread_index() {
        Some(i) if rayon::current_num_threads() > 1 && TEAM.get().is_none() => i,
        _ => return f(),
    };
    let team = Team::default();
    rayon::in_place_scope(|scope| {
        scope.spawn_broadcast(|_, context| {
            if context.index() != me {
                team.serve();
            }
        });
        // Set on this thread while `f` runs; the helpers leave once `f` returns or unwinds.
        struct Membership<'a>(&'a Team);
        impl Drop for Membership<'_> {
            fn drop(&mut self) {
                TEAM.set(None);
                self.0.closed.store(true, Ordering::Release);
            }
        }
        TEAM.set(Some(&team as *const Team));
        let _membership = Membership(&team);
        f()
    })
}

/// Most tasks of one team loop: [`Team::claimed`] keeps the task count and the next
/// task in 32 bits each.
const MAX_TEAM_TASKS: u64 = u32::MAX as u64;

thread_local! {
    /// The team of the `team` call running on this thread, while its loops may use it.
    static TEAM: Cell<Option<*const Team>> = const { Cell::new(None) };
}

/// One parallel loop published to a team: lives on the caller's stack until every task
/// has finished.
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    finished: AtomicUsize,
    panicked: AtomicBool,
}

/// What the threads of one `team` call share.
#[derive(Default)]
struct Team {
    /// The current loop's task count (high 32 bits) and next unclaimed task (low 32).
    claimed: AtomicU64,
    /// The current loop's `Job`, valid while any of its tasks is unfinished.
    job: AtomicPtr<()>,
    /// Set when the call returns: the helpers leave.
    closed: AtomicBool,
}

impl Team {
    /// A helper's loop: claim and run tasks, and rayon's jobs (loops that are not the
    /// team's), until the call returns.
    fn serve(&self) {
        while !self.closed.load(Ordering::Acquire) {
            if !self.run_one() && rayon::yield_now() != Some(rayon::Yield::Executed) {
                std::hint::spin_loop();
            }
        }
    }

    /// Claims one task of the current loop and runs it; false when none is left.
    fn run_one(&self) -> bool {
        let mut word = self.claimed.load(Ordering::Acquire);
        loop {
            let (tasks, next) = (word >> 32, word & u64::from(u32::MAX));
            if next >= tasks {
                return false;
            }
            match self
                .claimed
                .compare_exchange_weak(word, word + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(now) => word = now,
            }
        }
        let task = (word & u64::from(u32::MAX)) as usize;
        // SAFETY: the loop whose task was just claimed cannot finish before this task does,
        // and its caller publishes `job` before the task count (Release; the claim above is
        // Acquire), so `job` is that loop's `Job`, alive on its caller's stack.
        let job = unsafe { &*(self.job.load(Ordering::Acquire) as *const Job) };
        if catch_unwind(AssertUnwindSafe(|| (job.f)(task))).is_err() {
            job.panicked.store(true, Ordering::Relaxed);
        }
        // The last touch of `job`: after this its caller may return.
        job.finished.fetch_add(1, Ordering::Release);
        true
    }

    /// Runs `f` for every task of `0..tasks` on the team, the caller included, and waits
    /// for all of them. Loops inside a task run as rayon tasks (`TEAM` is unset meanwhile).
    fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        let job = Job {
            f,
            finished: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
        };
        TEAM.set(None);
        self.job.store(&job as *const Job as *mut (), Ordering::Release);
        self.claimed.store((tasks as u64) << 32, Ordering::Release);
        while self.run_one() {}
        while job.finished.load(Ordering::Acquire) < tasks {
            std::hint::spin_loop();
        }
        TEAM.set(Some(self as *const Team));
        if job.panicked.load(Ordering::Relaxed) {
            resume_unwind(Box::new("a task of a parallel loop panicked"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("a pool")
    }

    /// How many times each task of each of `loops` loops of 1 to 40 tasks ran, inside a
    /// team or not; tasks run a nested loop of 3 tasks too.
    fn task_counts(in_team: bool, loops: usize) -> Vec<usize> {
        let counts: Vec<AtomicUsize> = (0..loops * 43).map(|_| AtomicUsize::new(0)).collect();
        let body = || {
            for l in 0..loops {
                let tasks = 1 + l % 40;
                for_each_task(tasks, |t| {
                    counts[l * 43 + t].fetch_add(1, Ordering::Relaxed);
                    for_each_task(3, |u| {
                        counts[l * 43 + 40 + u].fetch_add(1, Ordering::Relaxed);
                    });
                });
            }
        };
        if in_team {
            team(body)
        } else {
            body()
        }
        counts.into_iter().map(AtomicUsize::into_inner).collect()
    }

    #[test]
    fn a_team_runs_every_task_once_as_rayon_does() {
        for threads in [1, 2, 3] {
            let (with, without) = pool(threads).install(|| (task_counts(true, 200), task_counts(false, 200)));
            assert_eq!(with, without, "{threads} threads");
            for (l, chunk) in with.chunks(43).enumerate() {
                let tasks = 1 + l % 40;
                assert!(chunk[..tasks].iter().all(|&c| c == 1), "loop {l}: {chunk:?}");
                assert!(chunk[tasks..40].iter().all(|&c| c == 0), "loop {l}: {chunk:?}");
                assert!(chunk[40..].iter().all(|&c| c == tasks), "loop {l}: {chunk:?}");
            }
        }
        // Outside any pool a team is just the call.
        assert_eq!(team(|| 7), 7);
    }

    #[test]
    fn a_panicking_task_reaches_the_caller_after_every_other_task_finished() {
        let finished = AtomicUsize::new(0);
        let result = pool(2).install(|| {
            catch_unwind(AssertUnwindSafe(|| {
                team(|| {
                    for_each_task(8, |t| {
                        assert_ne!(t, 5, "task 5 fails");
                        std::thread::sleep(std::time::Duration::from_millis(2));
                        finished.fetch_add(1, Ordering::Relaxed);
                    })
                })
            }))
        });
        assert!(result.is_err());
        assert_eq!(finished.load(Ordering::Relaxed), 7);
        // The pool is still usable: the helpers left.
        assert_eq!(
            pool(2).install(|| team(|| task_counts(true, 3))),
            pool(2).install(|| task_counts(false, 3))
        );
    }

    #[test]
    fn ranges_cover_everything_once_in_order() {
        for total in [0, 1, 5, 7, 64, 1000] {
            for parts in [1, 2, 3, 8, 2000] {
                let rs: Vec<_> = ranges(total, parts).collect();
                let mut next = 0;
                for r in &rs {
                    assert_eq!(r.start, next);
                    next = r.end;
                }
                assert_eq!(next, total);
                if let (Some(min), Some(max)) = (rs.iter().map(|r| r.len()).min(), rs.iter().map(|r| r.len()).max()) {
                    assert!(max - min <= 1, "{total} in {parts}: {rs:?}");
                }
            }
        }
    }
}
