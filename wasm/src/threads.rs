//! The threaded build's pool: rayon's global pool over Web Workers that share this
//! instance's memory, with the thread that starts it as one of its threads.
//!
//! The page's side is `js/pool.js`: it starts `threads - 1` Workers, each instantiating
//! this module on the shared memory and calling [`run_pool_worker`], then calls
//! [`start_thread_pool`] on the thread that will call the engine. That thread joins the
//! pool (`use_current_thread`), so it computes its share of every parallel loop instead of
//! waiting for the others, and `threads` threads keep `threads` cores busy.

use crossbeam_channel::{unbounded, Receiver, Sender};
use rayon::{ThreadBuilder, ThreadPoolBuilder};
use std::sync::OnceLock;
use wasm_bindgen::prelude::*;

/// rayon's threads, handed from the pool's spawn handler to the Workers waiting for them.
fn threads_channel() -> &'static (Sender<ThreadBuilder>, Receiver<ThreadBuilder>) {
    static CHANNEL: OnceLock<(Sender<ThreadBuilder>, Receiver<ThreadBuilder>)> = OnceLock::new();
    CHANNEL.get_or_init(unbounded)
}

/// The compiled module and its shared memory, for `js/pool.js` to instantiate in each
/// Worker: `[WebAssembly.Module, WebAssembly.Memory]`.
#[wasm_bindgen(js_name = threadPoolShared)]
pub fn thread_pool_shared() -> js_sys::Array {
    js_sys::Array::of2(&wasm_bindgen::module(), &wasm_bindgen::memory())
}

/// A Worker's whole life: waits for one of rayon's threads and runs it (rayon's work loop,
/// which never returns while the pool lives).
#[wasm_bindgen(js_name = runPoolWorker)]
pub fn run_pool_worker() {
    if let Ok(thread) = threads_channel().1.recv() {
        thread.run();
    }
}

/// Makes rayon's global pool of `threads` threads: this thread and `threads - 1` Workers
/// running [`run_pool_worker`]. Once per instance.
#[wasm_bindgen(js_name = startThreadPool)]
pub fn start_thread_pool(threads: usize) -> Result<(), JsError> {
    if threads < 2 {
        return Err(JsError::new(&format!(
            "a thread pool needs at least 2 threads, found {threads}"
        )));
    }
    ThreadPoolBuilder::new()
        .num_threads(threads)
        .use_current_thread()
        .spawn_handler(|thread| {
            threads_channel()
                .0
                .send(thread)
                .map_err(|_| std::io::Error::other("the pool's channel is closed"))
        })
        .build_global()
        .map_err(|e| JsError::new(&format!("cannot start the thread pool: {e}")))
}
