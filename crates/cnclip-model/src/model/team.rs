//! Parallel loops for the model's kernels, and a team of threads that stay awake through a short
//! forward pass.
//!
//! [`for_each`] runs `f(0)`, …, `f(tasks − 1)` in parallel and returns when all are done. Outside
//! a team it is a rayon loop: right for an image batch, whose loops each run for milliseconds. A
//! text query is different: its ~70 loops (four matrix products, attention and LayerNorm per
//! layer) take 10–500 µs each, and between two of them rayon's idle workers give up after about
//! 30 `sched_yield`s and sleep; waking one costs a futex call and, in a VM, an inter-processor
//! interrupt. A query on the 2-core Xeon build machine made ~70 context switches, and the same
//! code with rayon's workers kept spinning (a patched rayon-core) ran 18.5 → 17.0 ms p50.
//!
//! [`with_team`] runs a closure with every other rayon worker held in a spin loop beside it for
//! as long as it runs: its [`for_each`] calls post their tasks to those workers, which claim
//! them through one atomic word and spin (`pause`) between loops instead of sleeping — yielding
//! the core after ~60 µs of nothing, and never more of them than the machine has cores. One
//! wake-up per forward pass instead of one per loop. The workers are rayon's own, taken with
//! `rayon::scope`: a worker busy elsewhere (another query, an indexing batch) simply never joins,
//! and the caller claims every task itself; nothing waits for a helper that is not there.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use rayon::prelude::*;

/// Runs `f(i)` for every `i < tasks`, in parallel: on the current [`with_team`] team if this
/// thread leads one, else on rayon's pool. Tasks may run in any order and on any thread.
pub(crate) fn for_each(tasks: usize, f: impl Fn(usize) + Sync + Send) {
    match tasks {
        0 => return,
        1 => return f(0),
        _ => {}
    }
    let team = TEAM.get();
    if team.is_null() || tasks > MAX_TASKS {
        (0..tasks).into_par_iter().for_each(f);
        return;
    }
    // A loop inside one of these tasks runs on rayon (on this thread: the team's other
    // workers are spinning, not stealing), not as a second job of the team.
    let _lead = Lead::take(team);
    // SAFETY: TEAM is only non-null inside `with_team`, which keeps the team alive.
    #[allow(unsafe_code)]
    unsafe { &*team }.run(tasks, &f);
}

/// Runs `f` on a rayon worker with the pool's other workers spinning beside it (module docs),
/// for a short pass of many small parallel loops: a text query. Returns what `f` returns;
/// a panic in `f` or in one of its tasks propagates.
pub(crate) fn with_team<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    // Never more spinning threads than cores: a pool larger than the machine would have helpers
    // spinning while the threads that hold tasks wait for a core.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let helpers = rayon::current_num_threads().min(cores).saturating_sub(1);
    let team = Team {
        claim: AtomicU64::new(0),
        job: AtomicPtr::new(std::ptr::null_mut()),
        stop: AtomicBool::new(false),
        panicked: AtomicBool::new(false),
    };
    let mut out = None;
    rayon::scope(|s| {
        for _ in 0..helpers {
            s.spawn(|_| team.help());
        }
        let _lead = Lead::set(&team);
        out = Some(f());
    });
    out.expect("the scope ran its body")
}

/// At most this many tasks per team loop (the task counter's 16 bits); larger loops go to rayon.
const MAX_TASKS: usize = 0xFFFF;

thread_local! {
    /// The team this thread leads, if any (null otherwise, and while it runs a team loop).
    static TEAM: Cell<*const Team> = const { Cell::new(std::ptr::null()) };
}

/// One parallel loop posted to a team; lives on the leader's stack until all its tasks are done.
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    done: AtomicUsize,
}

struct Team {
    /// The current loop's number (bits 32–63), task count (16–31) and next unclaimed task
    /// (0–15). Tasks are claimed by compare-and-swap, so a worker still looking at an earlier
    /// loop can never claim a task of a later one.
    claim: AtomicU64,
    /// The current loop's [`Job`], stored before `claim` announces the loop.
    job: AtomicPtr<()>,
    /// Set when the leader's closure has returned: the spinning workers leave.
    stop: AtomicBool,
    /// Set when a task panicked; the leader panics once the loop is done.
    panicked: AtomicBool,
}

impl Team {
    /// The leader's side: posts the loop, works on it, and waits for the tasks others claimed.
    fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        let job = Job {
            f,
            done: AtomicUsize::new(0),
        };
        self.job
            .store(&job as *const Job<'_> as *mut (), Ordering::Release);
        // 1, 2, …, 2³² − 1, 1, …: never 0, which a worker that has seen no loop yet holds.
        let epoch = (self.claim.load(Ordering::Relaxed) >> 32) % 0xFFFF_FFFF + 1;
        self.claim
            .store(epoch << 32 | (tasks as u64) << 16, Ordering::Release);
        self.work(epoch, &job);
        let mut idle = 0;
        while job.done.load(Ordering::Acquire) < tasks {
            wait(&mut idle);
        }
        if self.panicked.swap(false, Ordering::AcqRel) {
            panic!("a task of a parallel loop panicked");
        }
    }

    /// Claims and runs tasks of loop `epoch` until none is left.
    fn work(&self, epoch: u64, job: &Job<'_>) {
        while let Some(task) = self.claim(epoch) {
            self.run_task(job, task);
        }
    }

    /// Runs one claimed task and counts it done, panic or not.
    fn run_task(&self, job: &Job<'_>, task: usize) {
        if catch_unwind(AssertUnwindSafe(|| (job.f)(task))).is_err() {
            self.panicked.store(true, Ordering::Release);
        }
        job.done.fetch_add(1, Ordering::AcqRel);
    }

    /// The next unclaimed task of loop `epoch`, or `None` when it has none left or is over.
    fn claim(&self, epoch: u64) -> Option<usize> {
        let mut word = self.claim.load(Ordering::Acquire);
        loop {
            let (current, tasks, next) = (word >> 32, (word >> 16) & 0xFFFF, word & 0xFFFF);
            if current != epoch || next >= tasks {
                return None;
            }
            match self.claim.compare_exchange_weak(
                word,
                word + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(next as usize),
                Err(now) => word = now,
            }
        }
    }

    /// A spinning worker's side: joins each loop announced until the leader is done.
    fn help(&self) {
        let (mut seen, mut idle) = (0, 0);
        while !self.stop.load(Ordering::Acquire) {
            let epoch = self.claim.load(Ordering::Acquire) >> 32;
            if epoch == seen {
                wait(&mut idle);
                continue;
            }
            idle = 0;
            // SAFETY: `job` was stored before `claim` announced `epoch` (both Release, read
            // here with Acquire in the same order). It is dereferenced only after a task of
            // `epoch` has been claimed: until that task is done, the loop is not over and the
            // leader keeps the job alive. A pointer stored for a later loop is never followed,
            // since no task of `epoch` can be claimed once a later loop has been announced.
            let job = self.job.load(Ordering::Acquire) as *const Job<'_>;
            while let Some(task) = self.claim(epoch) {
                #[allow(unsafe_code)]
                self.run_task(unsafe { &*job }, task);
            }
            seen = epoch;
        }
    }
}

/// One round of waiting: `pause` for the first [`SPINS`] rounds (55–60 µs on the Xeon build
/// machine, longer than the gaps between a query's loops; `pause` takes from ~10 to ~140 cycles
/// depending on the CPU), then `sched_yield`, so that a thread that holds a task but lost
/// its core (a busy machine, or more threads than cores) gets it back instead of waiting out a
/// time slice behind a spinning one.
fn wait(rounds: &mut u32) {
    if *rounds < SPINS {
        *rounds += 1;
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// Rounds of [`wait`] spent spinning before yielding.
const SPINS: u32 = 1 << 12;

/// Sets (or clears) this thread's [`TEAM`] and puts back the previous value on drop, panics
/// included; the guard that set a team also stops it.
struct Lead {
    previous: *const Team,
    stops: Option<*const Team>,
}

impl Lead {
    fn set(team: &Team) -> Lead {
        Lead {
            previous: TEAM.replace(team),
            stops: Some(team),
        }
    }

    fn take(team: *const Team) -> Lead {
        TEAM.set(std::ptr::null());
        Lead {
            previous: team,
            stops: None,
        }
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        TEAM.set(self.previous);
        if let Some(team) = self.stops {
            // SAFETY: the team outlives the guard (both live in `with_team`'s scope).
            #[allow(unsafe_code)]
            unsafe { &*team }.stop.store(true, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_with_and_without_a_team() {
        let check = |tasks: usize| {
            let counts: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
            for_each(tasks, |i| {
                counts[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1));
        };
        for tasks in [0, 1, 2, 7, 64, 1000] {
            check(tasks);
        }
        with_team(|| {
            for round in 0..2000 {
                check(round % 37);
            }
            check(MAX_TASKS + 1); // too many for the counter: rayon runs it
        });
    }

    #[test]
    fn a_pool_larger_than_the_machine_still_finishes() {
        // More rayon threads than cores: at most cores − 1 helpers spin, and waiting threads
        // yield, so this takes milliseconds rather than time slices.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(16)
            .build()
            .unwrap();
        let sum = AtomicUsize::new(0);
        pool.install(|| {
            with_team(|| {
                for _ in 0..500 {
                    for_each(24, |i| {
                        sum.fetch_add(i, Ordering::Relaxed);
                    });
                }
            })
        });
        assert_eq!(sum.load(Ordering::Relaxed), 500 * (0..24).sum::<usize>());
    }

    #[test]
    fn nested_loops_and_results_come_back() {
        let total = AtomicUsize::new(0);
        let out = with_team(|| {
            for_each(8, |i| {
                for_each(4, |j| {
                    total.fetch_add(i * 4 + j, Ordering::Relaxed);
                });
            });
            42
        });
        assert_eq!(out, 42);
        assert_eq!(total.load(Ordering::Relaxed), (0..32).sum::<usize>());
        // No team is left behind on this thread.
        assert!(TEAM.get().is_null());
    }

    #[test]
    fn a_panicking_task_panics_the_caller_and_the_team_still_ends() {
        let result = catch_unwind(|| {
            with_team(|| {
                for_each(16, |i| assert!(i != 11, "task 11 fails"));
            })
        });
        assert!(result.is_err());
        assert!(TEAM.get().is_null());
        // The pool is usable afterwards.
        assert_eq!(with_team(|| 7), 7);
    }
}
