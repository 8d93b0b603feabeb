//! The one rule by which the blocked kernels cut a call into parallel tasks: a fixed
//! number of contiguous, nearly equal parts, decided by the unit count and the thread
//! count alone. Fixed chunks (never work-stealing order) keep reductions over parts
//! deterministic for a given thread count.
//!
//! # Steps
//! Loops whose parts write disjoint outputs may cut each task into steps ([`Steps`]):
//! the task's thread runs them in order, and a thread that has run out of work takes
//! the steps left from the back of another task instead of waiting for it. The steps are
//! fixed as the tasks are, so the results do not depend on which thread ran what.
//!
//! # Teams
//! A network call is tens of layers, and at batch 1 a layer is 10-40 us of work: a rayon
//! fork-join per layer (about 1-2 us natively, more in wasm, where idle Workers sleep on
//! `Atomics.wait`) weighs as much as the work it shares. [`team`] runs one call with the
//! pool's other threads spinning beside it: a parallel loop inside publishes its tasks as
//! one contiguous block per thread, each thread runs its own block and then takes tasks
//! from the back of the others', and the caller waits for the last one. Which thread runs
//! a task never changes what the task computes, so results are the same with or without
//! a team.

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
    (0..parts.max(1)).map_while(move |i| range(total, parts, i))
}

/// Range `i` of [`ranges`]`(total, parts)` (`None` past the last), without walking the
/// ranges before it: loops with hundreds of tasks look theirs up in every task. The one
/// place of the rule that cuts work into parts.
pub fn range(total: usize, parts: usize, i: usize) -> Option<Range<usize>> {
    let parts = parts.clamp(1, total.max(1));
    // With `parts <= total` no range is empty, so none is left out before `i`.
    (total > 0 && i < parts).then(|| (i * total / parts)..((i + 1) * total / parts))
}

/// Runs `f` on each of the [`parts`] ranges of `0..units` (as [`ranges`] cuts them), in
/// parallel.
pub fn for_each_range(units: usize, f: impl Fn(Range<usize>) + Send + Sync) {
    let parts = parts(units);
    for_each_task(parts, |task| {
        if let Some(range) = range(units, parts, task) {
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

/// Most tasks whose steps [`Steps`] lets other threads take: beyond this the loop has
/// more tasks than threads several times over, and claiming whole tasks balances it.
const MAX_SHARED_TASKS: usize = 16;

/// The steps of each task of one parallel loop that no thread has taken yet, so that a
/// thread that runs out of work takes steps from the back of another task rather than
/// wait for it: a task is a fixed part of the work, cut as every loop cuts it (so the
/// steps and what each computes never change), but which thread runs a step may.
///
/// With one task per thread, a call runs at its slowest thread's pace: a core another
/// tenant slows (one vCPU of this project's hosts often runs 20-25 % slower than the
/// other for minutes), a helper that joins late, or parts of unequal cost (7 rows cut
/// 3 + 4; border tiles) leave the other thread waiting.
///
/// Only for loops whose steps write disjoint outputs and share no per-task state: two
/// steps of one task may run on two threads at once.
pub struct Steps {
    /// Per task: its next unclaimed step from the front (high 32 bits) and one past its
    /// last unclaimed step (low 32); each on its own cache line, since owners claim
    /// steps while other threads read them.
    slots: [Slot; MAX_SHARED_TASKS],
    tasks: usize,
    /// Whether other threads may take a task's steps; when not, each task's owner runs
    /// them all, in order.
    shared: bool,
}

impl Steps {
    /// The queues of `tasks` tasks of `steps(task)` steps each; shared where `share` and
    /// the loop has 2 to [`MAX_SHARED_TASKS`] tasks. (On one thread nothing is taken: each
    /// task is finished before the next starts.)
    pub fn new(tasks: usize, share: bool, steps: impl Fn(usize) -> usize) -> Steps {
        let counts: [usize; MAX_SHARED_TASKS] = std::array::from_fn(|t| if t < tasks { steps(t) } else { 0 });
        // The slot words keep step numbers in 32 bits.
        let shared = share && (2..=MAX_SHARED_TASKS).contains(&tasks) && counts.iter().all(|&n| n <= u32::MAX as usize);
        let slots = counts.map(|n| Slot::new(0..if shared { n } else { 0 }));
        Steps { slots, tasks, shared }
    }

    /// Runs the steps of `task` (`f(task, step)`), in order, that no other thread took,
    /// then, where shared, the steps left in the tasks other threads have started: from
    /// the back of the one with the most left, until it has none (a kernel's steps of one
    /// task may share set-up, such as Winograd's transformed inputs), then the next. A
    /// task no thread has started is left to the loop, which gives it whole to the next
    /// free thread. `steps` counts the task's steps (as in `new`).
    pub fn run(&self, task: usize, steps: impl Fn(usize) -> usize, mut f: impl FnMut(usize, usize)) {
        if !self.shared {
            (0..steps(task)).for_each(|s| f(task, s));
            return;
        }
        while let Some(s) = self.take(task, true) {
            f(task, s);
        }
        loop {
            let most = (0..self.tasks)
                .map(|t| (self.left_once_started(t), t))
                .max()
                .filter(|&(left, _)| left > 0);
            let Some((_, victim)) = most else {
                return;
            };
            while let Some(s) = self.take(victim, false) {
                f(victim, s);
            }
        }
    }

    /// Steps of `task` not yet taken, if its owner has taken one (else 0).
    fn left_once_started(&self, task: usize) -> usize {
        let slot = &self.slots[task];
        if slot.get().0 == 0 {
            return 0;
        }
        slot.left()
    }

    /// Claims the first (`front`) or the last unclaimed step of `task`.
    fn take(&self, task: usize, front: bool) -> Option<usize> {
        self.slots[task].take(front)
    }
}

/// A range of work items (steps of a task, or tasks of a team member) that threads
/// claim from either end: the next unclaimed item (high 32 bits) and one past the last
/// unclaimed item (low 32), on its own cache line, since its owner claims items while
/// other threads read it.
#[repr(align(64))]
struct Slot(AtomicU64);

impl Slot {
    fn new(range: Range<usize>) -> Slot {
        Slot(AtomicU64::new(Slot::pack(range)))
    }

    fn pack(range: Range<usize>) -> u64 {
        ((range.start as u64) << 32) | range.end.max(range.start) as u64
    }

    /// Makes `range` the slot's items (Release: whoever claims one sees what was written
    /// before).
    fn set(&self, range: Range<usize>) {
        self.0.store(Slot::pack(range), Ordering::Release);
    }

    /// The next and one past the last unclaimed item.
    fn get(&self) -> (usize, usize) {
        let word = self.0.load(Ordering::Relaxed);
        ((word >> 32) as usize, (word & u64::from(u32::MAX)) as usize)
    }

    /// How many items are unclaimed.
    fn left(&self) -> usize {
        let (next, end) = self.get();
        end.saturating_sub(next)
    }

    /// Claims the first (`front`) or the last unclaimed item.
    fn take(&self, front: bool) -> Option<usize> {
        let mut word = self.0.load(Ordering::Relaxed);
        loop {
            let (next, end) = (word >> 32, word & u64::from(u32::MAX));
            if next >= end {
                return None;
            }
            let (claimed, new) = if front {
                (next, word + (1 << 32))
            } else {
                (end - 1, word - 1)
            };
            match self
                .0
                .compare_exchange_weak(word, new, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Some(claimed as usize),
                Err(now) => word = now,
            }
        }
    }
}

/// Runs `f(task, step)` for every step of `0..steps(task)` of every task of `0..tasks`
/// in parallel, each task's owner running its steps in order and idle threads taking
/// the steps left ([`Steps`]; `share` as there).
pub fn for_each_step(
    tasks: usize,
    share: bool,
    steps: impl Fn(usize) -> usize + Send + Sync,
    f: impl Fn(usize, usize) + Send + Sync,
) {
    let queues = Steps::new(tasks, share, &steps);
    for_each_task(tasks, |t| queues.run(t, &steps, &f));
}

/// Runs `f(task, units)` over `0..units` cut as [`for_each_range`] cuts it, each task's
/// range in steps that end at the multiples of `segment` (a kernel's units of one image
/// and channel group, say, whose steps then read one weight slab), steps shared as
/// [`Steps`] says where `share`.
pub fn for_each_segment(units: usize, segment: usize, share: bool, f: impl Fn(usize, Range<usize>) + Send + Sync) {
    let segment = segment.max(1);
    let tasks = parts(units);
    let range_of = |t: usize| range(units, tasks, t).unwrap_or(0..0);
    let first = |r: &Range<usize>| r.start - r.start % segment;
    let steps = |t: usize| {
        let r = range_of(t);
        (r.end - first(&r)).div_ceil(segment) * usize::from(!r.is_empty())
    };
    for_each_step(tasks, share, steps, |t, step| {
        let r = range_of(t);
        let at = first(&r) + step * segment;
        f(t, at.max(r.start)..(at + segment).min(r.end));
    });
}

/// Runs `f` (one call into the engine) with the current rayon pool's other threads
/// serving its parallel loops (see the module's doc) until it returns. Outside a pool, in
/// a pool of one thread, or inside another team's call, it just runs `f`.
pub fn team<R>(f: impl FnOnce() -> R) -> R {
    let me = match rayon::current_thread_index() {
        Some(i) if rayon::current_num_threads() > 1 && TEAM.get().is_none() => i,
        _ => return f(),
    };
    let members = rayon::current_num_threads();
    let team = Team {
        blocks: (0..members).map(|_| Slot::new(0..0)).collect(),
        job: AtomicPtr::default(),
        closed: AtomicBool::new(false),
    };
    rayon::in_place_scope(|scope| {
        scope.spawn_broadcast(|_, context| {
            if context.index() != me {
                // The caller is member 0, the others follow it round the pool.
                team.serve((context.index() + members - me) % members);
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

/// Most tasks of one team loop: a [`Slot`] keeps task numbers in 32 bits.
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
///
/// Each loop's tasks are cut into one contiguous block per member ([`range`]), member 0
/// (the caller) taking the first: a member runs its own block from the front, then takes
/// tasks from the back of the block with the most left. So the same member computes the
/// same part of every loop's output (the top rows of an image, the first channels) and
/// the next loop finds most of its input in that member's caches: where the host puts
/// the two threads on different L3 caches (this project's Zen 4 VM, for seconds at a
/// time: a cache line passes between them in about 350 ns instead of 60), handing tasks
/// out first come, first served sent half of every input across.
struct Team {
    /// Per member: the current loop's tasks it has not started (a [`Slot`]).
    blocks: Vec<Slot>,
    /// The current loop's `Job`, valid while any of its tasks is unfinished.
    job: AtomicPtr<()>,
    /// Set when the call returns: the helpers leave.
    closed: AtomicBool,
}

impl Team {
    /// Member `member`'s loop: claim and run tasks, and rayon's jobs (loops that are not
    /// the team's), until the call returns.
    fn serve(&self, member: usize) {
        while !self.closed.load(Ordering::Acquire) {
            if !self.run_one(member) && rayon::yield_now() != Some(rayon::Yield::Executed) {
                std::hint::spin_loop();
            }
        }
    }

    /// Claims one task of the current loop for `member` (its own first, else the last of
    /// the block with the most left) and runs it; false when none is left.
    fn run_one(&self, member: usize) -> bool {
        let claimed = self.blocks[member].take(true).or_else(|| {
            let (most, victim) = self.blocks.iter().enumerate().map(|(m, b)| (b.left(), m)).max()?;
            (most > 0).then(|| self.blocks[victim].take(false)).flatten()
        });
        let Some(task) = claimed else {
            return false;
        };
        // SAFETY: the loop whose task was just claimed cannot finish before this task does,
        // and its caller publishes `job` before the blocks (Release; the claim is Acquire),
        // so `job` is that loop's `Job`, alive on its caller's stack.
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
        let members = self.blocks.len();
        // The helpers' blocks first: the caller starts on its own as soon as it is set.
        for (member, block) in self.blocks.iter().enumerate().rev() {
            block.set(range(tasks, members, member).unwrap_or(tasks..tasks));
        }
        while self.run_one(0) {}
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
        counts_after(in_team, loops * 43, |counts| {
            for l in 0..loops {
                let tasks = 1 + l % 40;
                for_each_task(tasks, |t| {
                    counts[l * 43 + t].fetch_add(1, Ordering::Relaxed);
                    for_each_task(3, |u| {
                        counts[l * 43 + 40 + u].fetch_add(1, Ordering::Relaxed);
                    });
                });
            }
        })
    }

    /// `len` counters after `body` ran on them, in a team or not.
    fn counts_after(in_team: bool, len: usize, body: impl Fn(&[AtomicUsize])) -> Vec<usize> {
        let counts: Vec<AtomicUsize> = (0..len).map(|_| AtomicUsize::new(0)).collect();
        if in_team {
            team(|| body(&counts))
        } else {
            body(&counts)
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

    /// Each member of a team runs the front of its own block of a loop's tasks, in order
    /// (the caller the first block), and any other thread only the back of it.
    #[test]
    fn a_team_member_runs_the_front_of_its_own_block() {
        const UNRUN: usize = usize::MAX;
        for (threads, tasks) in [(2, 2), (2, 8), (2, 13), (3, 8), (3, 2)] {
            let ran_on: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(UNRUN)).collect();
            let caller = pool(threads).install(|| {
                team(|| {
                    for_each_task(tasks, |t| {
                        // Slow enough that members run out of their own tasks and take others'.
                        std::thread::sleep(std::time::Duration::from_millis(2));
                        ran_on[t].store(rayon::current_thread_index().unwrap_or(UNRUN), Ordering::Relaxed);
                    })
                });
                rayon::current_thread_index().unwrap_or(UNRUN)
            });
            let ran_on: Vec<usize> = ran_on.into_iter().map(AtomicUsize::into_inner).collect();
            for member in 0..threads {
                let owner = (caller + member) % threads;
                let block = range(tasks, threads, member).unwrap_or(tasks..tasks);
                let by_owner = ran_on[block.clone()].iter().take_while(|&&t| t == owner).count();
                assert!(
                    ran_on[block.start + by_owner..block.end]
                        .iter()
                        .all(|&t| t != owner && t != UNRUN),
                    "{threads} threads, {tasks} tasks: block {block:?} of thread {owner} ran on {ran_on:?}"
                );
            }
        }
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

    /// Steps of task `t` of `tasks` in `step_counts`: `t % 5`, 37 more for the last.
    fn test_steps(t: usize, tasks: usize) -> usize {
        t % 5 + usize::from(t + 1 == tasks) * 37
    }

    /// How many times each step of each task ran, for `tasks` tasks of [`test_steps`]
    /// steps, with `for_each_step` in a team or not.
    fn step_counts(in_team: bool, tasks: usize, share: bool) -> Vec<usize> {
        let steps = |t: usize| test_steps(t, tasks);
        counts_after(in_team, tasks * 42, |counts| {
            for_each_step(tasks, share, steps, |t, s| {
                assert!(s < steps(t), "task {t} step {s}");
                counts[t * 42 + s].fetch_add(1, Ordering::Relaxed);
            })
        })
    }

    #[test]
    fn every_step_runs_once_shared_or_not() {
        for threads in [1, 2, 3] {
            for tasks in [0, 1, 2, 3, MAX_SHARED_TASKS, MAX_SHARED_TASKS + 1, 40] {
                for (in_team, share) in [(false, false), (false, true), (true, true)] {
                    let counts = pool(threads).install(|| step_counts(in_team, tasks, share));
                    for (t, chunk) in counts.chunks(42).enumerate() {
                        let steps = test_steps(t, tasks);
                        assert!(
                            chunk[..steps].iter().all(|&c| c == 1),
                            "{threads} threads, task {t}: {chunk:?}"
                        );
                        assert!(
                            chunk[steps..].iter().all(|&c| c == 0),
                            "{threads} threads, task {t}: {chunk:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn an_idle_thread_takes_the_steps_left_of_a_slow_task() {
        // Task 0 has 50 steps of 1 ms, task 1 none: whichever thread takes task 1 has
        // nothing to do but take task 0's steps from the back.
        // The thread that ran each step of task 0, for `steps` steps of `pause` each.
        let ran_on = |share: bool, steps: usize, pause: std::time::Duration| -> Vec<usize> {
            let ran_on: Vec<AtomicUsize> = (0..steps).map(|_| AtomicUsize::new(usize::MAX)).collect();
            pool(2).install(|| {
                for_each_step(
                    2,
                    share,
                    |t| if t == 0 { steps } else { 0 },
                    |_, s| {
                        ran_on[s].store(rayon::current_thread_index().unwrap_or(9), Ordering::Relaxed);
                        std::thread::sleep(pause);
                    },
                )
            });
            ran_on.into_iter().map(AtomicUsize::into_inner).collect()
        };
        let threads = ran_on(true, 50, std::time::Duration::from_millis(1));
        assert!(threads.iter().all(|&t| t < 2), "{threads:?}");
        // The owner runs from the front, the other thread from the back.
        assert_ne!(threads[0], threads[49], "{threads:?}");
        // Unshared, the owner runs them all.
        let threads = ran_on(false, 8, std::time::Duration::ZERO);
        assert!(threads.iter().all(|&t| t == threads[0]), "{threads:?}");
    }

    #[test]
    fn segments_end_at_multiples_and_cover_every_unit() {
        for units in [0, 1, 7, 20, 99] {
            for segment in [1, 3, 7, 100] {
                let seen: Vec<AtomicUsize> = (0..units).map(|_| AtomicUsize::new(0)).collect();
                pool(2).install(|| {
                    for_each_segment(units, segment, true, |_, r| {
                        assert!(
                            !r.is_empty() && r.start / segment == (r.end - 1) / segment,
                            "{r:?} / {segment}"
                        );
                        r.for_each(|u| {
                            seen[u].fetch_add(1, Ordering::Relaxed);
                        });
                    })
                });
                assert!(
                    seen.iter().all(|c| c.load(Ordering::Relaxed) == 1),
                    "{units} / {segment}"
                );
            }
        }
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
                for (i, r) in rs.iter().enumerate() {
                    assert_eq!(range(total, parts, i), Some(r.clone()), "{total} in {parts}: range {i}");
                }
                assert_eq!(range(total, parts, rs.len()), None, "{total} in {parts}");
                if let (Some(min), Some(max)) = (rs.iter().map(|r| r.len()).min(), rs.iter().map(|r| r.len()).max()) {
                    assert!(max - min <= 1, "{total} in {parts}: {rs:?}");
                }
            }
        }
    }
}
