//! Times a cache line passed back and forth between two threads: the round trip tells
//! whether the two cores share an L3 (about 60 ns on Zen 4) or not (330-370 ns between
//! the CCDs of an EPYC host). The engine's threads share every layer's input, so its
//! two-thread speed depends on which it is; on a VM the answer can change from second to
//! second, as the hypervisor moves the vCPUs. `scripts/l3ab.sh` runs it around each of a
//! benchmark's runs to sort them by where the threads sat.
//!
//! `cargo run --release -p resnet-core --example cache_pingpong -- [ROUND_TRIPS]`
//! (default 200000) prints the mean round trip in ns. Both threads spin, so on a machine
//! with two idle cores the scheduler gives each one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Round trips before the timed ones (at least a few milliseconds' worth).
const WARM_UP_TRIPS: u64 = 100_000;

/// The line the two threads pass: each waits for the other's number and writes the next.
#[repr(align(64))]
struct Line(AtomicU64);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let timed: u64 = std::env::args().nth(1).map_or(Ok(200_000), |s| s.parse())?;
    // Untimed trips first: a new thread often starts on its parent's core, and the
    // scheduler takes a few milliseconds to move one of two spinning threads away.
    let (warm_up, trips) = (WARM_UP_TRIPS, WARM_UP_TRIPS + timed);
    let line = Line(AtomicU64::new(0));
    let wait_for = |value: u64| {
        while line.0.load(Ordering::Acquire) != value {
            std::hint::spin_loop();
        }
    };
    let elapsed = std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..trips {
                wait_for(2 * i + 1);
                line.0.store(2 * i + 2, Ordering::Release);
            }
        });
        let mut start = Instant::now();
        for i in 0..trips {
            if i == warm_up {
                start = Instant::now();
            }
            line.0.store(2 * i + 1, Ordering::Release);
            wait_for(2 * i + 2);
        }
        start.elapsed()
    });
    println!("{:.0} ns round trip", elapsed.as_secs_f64() * 1e9 / timed.max(1) as f64);
    Ok(())
}
