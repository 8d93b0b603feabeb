// The threaded build's pool on the page's side (`init` with threads > 1): Workers that
// instantiate the threaded module on its shared memory and become rayon's threads; the
// calling thread is the pool's first thread (`src/threads.rs`). Workers are started from
// `pool-worker.js` beside this file, so the package must be served from the page's
// origin (as `async-worker.js`).

/** Workers kept referenced for the page's life (Firefox collects unreferenced Workers
 * that share a memory). */
const workers = [];

/** Starts `threads - 1` Workers on `glue` (the threaded build, initialised) and makes the
 * pool of `threads` threads. */
export async function startPool(glue, threads) {
  const [module, memory] = glue.threadPoolShared();
  const glueUrl = new URL('./threads/resnet_wasm.js', import.meta.url).href;
  await Promise.all(Array.from({ length: threads - 1 }, () => new Promise((resolve, reject) => {
    const worker = new Worker(new URL('./pool-worker.js', import.meta.url), { type: 'module' });
    worker.onmessage = ({ data }) => {
      if (data && data.ready) resolve();
      else reject(new Error(`resnet-wasm: a pool Worker failed: ${data && data.error}`));
    };
    worker.onerror = (e) => {
      e.preventDefault?.();
      reject(new Error(`resnet-wasm: a pool Worker could not start: ${e.message || 'no message'}`));
    };
    worker.postMessage({ glue: glueUrl, module, memory });
    workers.push(worker);
  })));
  glue.startThreadPool(threads);
}
