//! Fork–join of two closures with a wake-up measured in hundreds of nanoseconds, for the small
//! parallel regions of decoding (the two column halves of a weight, two halves of the attention
//! heads), which last tens of microseconds: a rayon worker that has gone to sleep takes 20–50 µs
//! to wake on the 2-vCPU host of the README, more than such a region saves.
//!
//! One helper thread serves the process. After each job it spins (yielding the core to any other
//! runnable thread) for [`SPIN`] before it parks, so the regions of one pass, and of passes a few
//! draft steps apart, find it awake. [`join`] posts `b` to it and runs `a`; if the helper has not
//! started `b` when `a` is done, the caller takes `b` back and runs it itself, so a parked helper
//! never costs more than the plain sequence `a(); b()`. One caller uses the helper at a time
//! (others, and nested calls, run both closures in turn), and with one thread in rayon's pool
//! (`RAYON_NUM_THREADS=1`, or inside a one-thread pool) nothing runs on the helper.

use std::cell::UnsafeCell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::OnceLock;
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// How long the helper stays awake after its last job: longer than a speculative round's draft
/// steps (a few hundred microseconds), so that the verifier's next pass finds it spinning.
pub(crate) const SPIN: Duration = Duration::from_millis(2);

/// No job.
const IDLE: u8 = 0;
/// A job is posted and not yet started.
const POSTED: u8 = 1;
/// The helper runs the job.
const RUNNING: u8 = 2;
/// The helper has finished the job.
const DONE: u8 = 3;

/// A posted job: a function that runs the type-erased task at the pointer.
type Job = (unsafe fn(*mut ()), *mut ());

struct Helper {
    /// A caller owns the helper (between posting and collecting its job).
    owned: AtomicBool,
    state: AtomicU8,
    /// Written by the owner before `POSTED`, read by the helper after it.
    job: UnsafeCell<Option<Job>>,
    parked: AtomicBool,
    thread: Thread,
}

// SAFETY: `job` is written only by the caller that owns the helper, before it publishes `POSTED`
// (release), and read only by the helper after it moves `POSTED` to `RUNNING` (acquire) or by the
// owner after it takes the job back; the pointer it holds is used while the owner waits.
unsafe impl Sync for Helper {}

fn helper() -> Option<&'static Helper> {
    static HELPER: OnceLock<Option<&'static Helper>> = OnceLock::new();
    *HELPER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<&'static Helper>();
        thread::Builder::new()
            .name("s4-pair".into())
            .spawn(move || {
                let me: &'static Helper = Box::leak(Box::new(Helper {
                    owned: AtomicBool::new(false),
                    state: AtomicU8::new(IDLE),
                    job: UnsafeCell::new(None),
                    parked: AtomicBool::new(false),
                    thread: thread::current(),
                }));
                if tx.send(me).is_ok() {
                    serve(me);
                }
            })
            .ok()?;
        rx.recv().ok()
    })
}

/// The helper's loop: take posted jobs; spin for [`SPIN`] after the last one, then park.
fn serve(h: &Helper) -> ! {
    let mut last = Instant::now();
    let mut polls = 0u32;
    loop {
        if h.state.load(Ordering::Acquire) == POSTED
            && h.state.compare_exchange(POSTED, RUNNING, Ordering::Acquire, Ordering::Relaxed).is_ok()
        {
            // SAFETY: `RUNNING` gives this thread the job until it publishes `DONE`; the owner
            // waits for `DONE` before its task leaves scope.
            unsafe {
                let (run, data) = (*h.job.get()).expect("a posted job");
                run(data);
            }
            h.state.store(DONE, Ordering::Release);
            last = Instant::now();
            continue;
        }
        polls += 1;
        if !polls.is_multiple_of(64) {
            std::hint::spin_loop();
            continue;
        }
        if last.elapsed() < SPIN {
            thread::yield_now();
            continue;
        }
        // park, unless a job arrived in between (the owner reads `parked` after posting)
        h.parked.store(true, Ordering::SeqCst);
        if h.state.load(Ordering::SeqCst) != POSTED {
            thread::park();
        }
        h.parked.store(false, Ordering::SeqCst);
        last = Instant::now();
    }
}

/// A closure and its result, on the caller's stack while the helper may run it.
struct Task<F, B> {
    f: Option<F>,
    out: Option<thread::Result<B>>,
}

/// Runs the task at `data` (a `Task<F, B>`), catching a panic for the owner to resume.
unsafe fn run_task<F: FnOnce() -> B, B>(data: *mut ()) {
    // SAFETY: `data` is the owner's `Task<F, B>`, which outlives the job (see `serve`).
    let task = unsafe { &mut *data.cast::<Task<F, B>>() };
    let f = task.f.take().expect("a job runs once");
    task.out = Some(panic::catch_unwind(AssertUnwindSafe(f)));
}

/// Takes the job back if the helper has not started it, else waits for it; releases the helper.
/// Returns whether the job was taken back (then it has not run).
struct Collect<'a>(&'a Helper);

impl Collect<'_> {
    fn finish(&self) -> bool {
        let h = self.0;
        let reclaimed = h.state.compare_exchange(POSTED, IDLE, Ordering::Acquire, Ordering::Relaxed).is_ok();
        if !reclaimed {
            let mut polls = 0u32;
            while h.state.load(Ordering::Acquire) != DONE {
                polls += 1;
                if polls.is_multiple_of(1024) {
                    thread::yield_now();
                } else {
                    std::hint::spin_loop();
                }
            }
            h.state.store(IDLE, Ordering::Relaxed);
        }
        h.owned.store(false, Ordering::Release);
        reclaimed
    }
}

impl Drop for Collect<'_> {
    /// If `a` panicked: the helper must be done with the task before the stack unwinds past it.
    fn drop(&mut self) {
        self.finish();
    }
}

/// (a(), b()): `a` on the calling thread, `b` on the helper thread when it is free and picks it
/// up before `a` is done, else on the calling thread after `a`. A panic in either is resumed
/// here.
pub(crate) fn join<A, B: Send, FB: FnOnce() -> B + Send>(a: impl FnOnce() -> A, b: FB) -> (A, B) {
    let free = if rayon::current_num_threads() > 1 { helper() } else { None }
        .filter(|h| h.owned.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_ok());
    let Some(h) = free else {
        return (a(), b());
    };
    let mut task = Task { f: Some(b), out: None };
    // SAFETY: this caller owns the helper (`owned`), so nobody else touches `job` until it is
    // released; `task` outlives the job: `Collect` waits for it or takes it back, also when `a`
    // panics.
    unsafe {
        *h.job.get() = Some((run_task::<FB, B> as unsafe fn(*mut ()), (&raw mut task).cast::<()>()));
    }
    h.state.store(POSTED, Ordering::SeqCst);
    if h.parked.load(Ordering::SeqCst) {
        h.thread.unpark();
    }
    let collect = Collect(h);
    let ra = a();
    let reclaimed = collect.finish();
    std::mem::forget(collect);
    let rb = if reclaimed {
        (task.f.take().expect("a job taken back has not run"))()
    } else {
        match task.out.take().expect("a finished job has its result") {
            Ok(rb) => rb,
            Err(payload) => panic::resume_unwind(payload),
        }
    };
    (ra, rb)
}

/// Whether the decoding kernels split their work on the helper instead of rayon's pool: with
/// exactly two threads in the pool (the host of the README), where the two halves of a split
/// match the pool and a rayon worker's wake-up costs more than a region saves; with more threads
/// rayon's wider split is kept.
pub(crate) fn replaces_pool() -> bool {
    rayon::current_num_threads() == 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_return_both_results_in_order() {
        for n in 0..200u64 {
            let (a, b) = join(|| n * 2, || n * 3);
            assert_eq!((a, b), (n * 2, n * 3));
        }
    }

    #[test]
    fn concurrent_and_nested_callers_run_everything() {
        let total: u64 = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|t| {
                    s.spawn(move || {
                        (0..300u64)
                            .map(|i| {
                                let (a, (b, c)) = join(|| i + t, || join(|| i * 2, || 1u64));
                                a + b + c
                            })
                            .sum::<u64>()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        let expected: u64 = (0..4u64).map(|t| (0..300u64).map(|i| i + t + 2 * i + 1).sum::<u64>()).sum();
        assert_eq!(total, expected);
    }

    #[test]
    fn a_panic_on_either_side_reaches_the_caller() {
        let r = std::panic::catch_unwind(|| join(|| 1, || -> u32 { panic!("right side") }));
        assert!(r.is_err());
        let r = std::panic::catch_unwind(|| {
            join(
                || -> u32 { panic!("left side") },
                || {
                    std::thread::sleep(Duration::from_millis(5));
                    2
                },
            )
        });
        assert!(r.is_err());
        // the helper is free again
        assert_eq!(join(|| 3, || 4), (3, 4));
    }
}
