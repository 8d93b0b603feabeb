// The synchronous API of resnet-wasm over the raw wasm-bindgen classes of `resnet_wasm.js`.
// Errors from the engine arrive as JS `Error`s with the engine's message. A Rust panic
// or a WebAssembly trap (e.g. running out of memory) is reported (an Error naming it) and
// the instance is then refused: its memory may be inconsistent, so load the module afresh
// (e.g. a new Worker).

import wasmInit, * as singleThread from './resnet_wasm.js';

/** The glue of the build `init` loaded: this one, or `threads/resnet_wasm.js`. */
let raw = singleThread;
let ready = false;
let pending = null;
let poisoned = null;

/** A module of one function of one `f32x4.relaxed_madd`: it validates exactly where the
 * engine runs relaxed SIMD. */
const RELAXED_SIMD_PROBE = new Uint8Array([
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version 1
  0x01, 0x08, 0x01, 0x60, 0x03, 0x7b, 0x7b, 0x7b, 0x01, 0x7b, // type: (v128, v128, v128) -> v128
  0x03, 0x02, 0x01, 0x00, // one function of that type
  0x0a, 0x0d, 0x01, 0x0b, 0x00, 0x20, 0x00, 0x20, 0x01, 0x20, 0x02, 0xfd, 0x85, 0x02, 0x0b, // local.get 0 1 2, f32x4.relaxed_madd
]);

/** Whether this JavaScript engine runs WebAssembly relaxed SIMD (Chrome 114+, Firefox 145+, Node 22+). */
export function supportsRelaxedSimd() {
  try {
    return WebAssembly.validate(RELAXED_SIMD_PROBE);
  } catch {
    return false;
  }
}

/** The file `init()` loads by default: `resnet_wasm_relaxed_bg.wasm` (relaxed SIMD: fused
 * multiply-adds) where the engine runs relaxed SIMD, else `resnet_wasm_bg.wasm` (SIMD128). */
export function wasmFile() {
  return supportsRelaxedSimd() ? 'resnet_wasm_relaxed_bg.wasm' : 'resnet_wasm_bg.wasm';
}

/** A module of one shared memory and one `i32.atomic.load`: it validates where the
 * engine's threaded build can run. */
const THREADS_PROBE = new Uint8Array([
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version 1
  0x01, 0x04, 0x01, 0x60, 0x00, 0x00, // type: () -> ()
  0x03, 0x02, 0x01, 0x00, // one function of that type
  0x05, 0x04, 0x01, 0x03, 0x01, 0x01, // memory: shared, 1 page, at most 1
  0x0a, 0x0b, 0x01, 0x09, 0x00, 0x41, 0x00, 0xfe, 0x10, 0x02, 0x00, 0x1a, 0x0b, // i32.const 0, i32.atomic.load, drop
]);

/** Most threads `init` starts by default (`threads: 'auto'`). */
const MAX_AUTO_THREADS = 8;

/** Whether this context can run the threaded build: it is cross-origin isolated (COOP and
 * COEP headers, as `SharedArrayBuffer` needs), can start Workers and validates shared
 * memory. Node is not: there the engine runs one thread. */
export function supportsThreads() {
  try {
    return globalThis.crossOriginIsolated === true && typeof SharedArrayBuffer !== 'undefined' &&
      typeof Worker !== 'undefined' && WebAssembly.validate(THREADS_PROBE);
  } catch {
    return false;
  }
}

/** Threads `init` runs for `threads` (`'auto'`, or a count) where the build can run. */
function threadCount(threads) {
  const n = threads === 'auto' ? Math.min(MAX_AUTO_THREADS, (typeof navigator !== 'undefined' && navigator.hardwareConcurrency) || 1) : threads;
  if (!Number.isInteger(n) || n < 1) throw new TypeError(`threads must be 'auto' or a whole number >= 1, found ${threads}`);
  return supportsThreads() ? n : 1;
}

/** Initialises the module. Idempotent.
 * `threads` (default `'auto'`): where `supportsThreads()`, the threaded build
 * (`threads/resnet_wasm_bg.wasm`) with that many Web Workers as the engine's pool
 * (`'auto'`: `navigator.hardwareConcurrency`, at most 8); elsewhere, or with `threads: 1`,
 * `wasmFile()`. `input` (URL, Response, bytes or WebAssembly.Module) replaces the default
 * file: a single-thread build, unless `threads` is given as a count above 1, when it must
 * be the threaded build. */
export function init(input, { threads = input === undefined ? 'auto' : 1 } = {}) {
  if (ready) return Promise.resolve();
  if (!pending) {
    let count;
    try {
      count = threadCount(threads);
    } catch (e) {
      return Promise.reject(e);
    }
    pending = load(input, count, threads !== 'auto').then(() => {
      ready = true;
    }, (e) => {
      pending = null;
      raw = singleThread;
      throw e;
    });
  }
  return pending;
}

/** Loads the threaded build when `threads` > 1, else (or when that fails and the count was
 * not `asked` for explicitly) the single-thread build. */
async function load(input, threads, asked) {
  if (threads > 1) {
    try {
      const threaded = await import('./threads/resnet_wasm.js');
      await threaded.default({ module_or_path: input ?? new URL('./threads/resnet_wasm_bg.wasm', import.meta.url) });
      const { startPool } = await import('./pool.js');
      await startPool(threaded, threads);
      raw = threaded;
      return;
    } catch (e) {
      if (asked) throw e;
      console.warn(`resnet-wasm: the threaded build did not start (${e && e.message ? e.message : e}); running one thread`);
    }
  }
  await wasmInit({ module_or_path: input ?? new URL(`./${wasmFile()}`, import.meta.url) });
}

/** Initialises the module synchronously from its bytes or a compiled WebAssembly.Module. */
export function initSync(module) {
  if (ready) return;
  raw.initSync({ module });
  ready = true;
}

function guard(f) {
  if (!ready) throw new Error('resnet-wasm is not initialised: await init() first');
  if (poisoned !== null) {
    throw new Error(`resnet-wasm: this instance panicked earlier (${poisoned}) and cannot be used any more; load the module again`);
  }
  try {
    return f();
  } catch (e) {
    const p = raw.takePanic();
    if (p !== undefined && p !== null) {
      poisoned = p;
      const err = new Error(`resnet-wasm panicked: ${p}`);
      err.cause = e;
      throw err;
    }
    if (e instanceof WebAssembly.RuntimeError) {
      poisoned = `a WebAssembly trap: ${e.message}`;
      const err = new Error(`resnet-wasm stopped on a WebAssembly trap (${e.message}); load the module again`);
      err.cause = e;
      throw err;
    }
    throw e;
  }
}

function bytes(b, what) {
  if (b instanceof Uint8Array) return b;
  if (b instanceof ArrayBuffer) return new Uint8Array(b);
  if (ArrayBuffer.isView(b)) return new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
  throw new TypeError(`${what} must be a Uint8Array, ArrayBuffer or typed array`);
}

function f32(v) {
  return v instanceof Float32Array ? v : Float32Array.from(v);
}

function pixels(image, i) {
  const data = image.rgba ?? image.data;
  if (!data || image.width === undefined || image.height === undefined) {
    throw new TypeError(`image ${i} needs { rgba | data, width, height } (an ImageData works)`);
  }
  return bytes(data, `image ${i} pixels`);
}

function count(v, what, dflt) {
  const n = v === undefined ? dflt : v;
  if (!Number.isInteger(n) || n < 0) throw new TypeError(`${what} must be a non-negative integer, found ${v}`);
  return n;
}

/** Version, SIMD and threading of the loaded engine: `{ version, simd128, threads, models }`. */
export function engineInfo() {
  return guard(() => raw.engineInfo());
}

/** Worker `index` of `workers`' share of a batch of `batch` images: `{ offset, size }`
 * (sizes differ by at most one, the first workers' larger). */
export function batchShare(batch, workers, index) {
  return guard(() => raw.batchShare(batch, workers, index));
}

/** Decodes a JPEG or PNG with the engine's decoder (the native CLI's): `{ width, height, rgba }`. */
export function decodeImage(data) {
  return guard(() => raw.decodeImage(bytes(data, 'image')));
}

/** A classifier: a ResNet with class names and preprocessing. */
export class Model {
  constructor(handle) {
    if (!(handle instanceof raw.WasmModel)) throw new TypeError('use Model.load() or Model.create()');
    this._m = handle;
  }

  /** Our safetensors, or a PyTorch checkpoint (.pth/.pt/.th, zip or legacy). */
  static load(data) {
    return guard(() => new Model(raw.WasmModel.load(bytes(data, 'model bytes'))));
  }

  /** A fresh network of the zoo, e.g. `Model.create('resnet20', { classes: 10, seed: 0 })`. */
  static create(arch, { classes = 10, seed = 0 } = {}) {
    return guard(() => new Model(raw.WasmModel.create(String(arch), classes, seed)));
  }

  /** This network with a new classifier for the classes `names` (initialised from `seed`),
   * every other weight and the preprocessing kept: where fine-tuning on other classes starts. */
  withClasses(names, { seed = 0 } = {}) {
    if (!Array.isArray(names)) throw new TypeError('withClasses takes an array of class names');
    return guard(() => new Model(this._m.withClasses(names.map(String), seed)));
  }

  info() {
    return guard(() => this._m.info());
  }

  /** Self-describing safetensors bytes (load them with `Model.load` or the native CLI). */
  save() {
    return guard(() => this._m.save());
  }

  /** Top-k classes of one RGBA image of any size (a canvas's ImageData.data). */
  classify(rgba, width, height, topK = 5) {
    const data = bytes(rgba, 'rgba');
    return guard(() => this._m.classifyRgba(data, count(width, 'width'), count(height, 'height'), count(topK, 'topK')));
  }

  /** Logits (`n x classes`, row-major) of an already preprocessed float batch of shape
   * `[n, 3, height, width]`: the network alone, as an ONNX session runs it. */
  forward(input, [n, c, height, width]) {
    if (c !== 3) throw new TypeError(`forward takes [n, 3, height, width], found ${c} channels`);
    return guard(() => this._m.forward(f32(input), count(n, 'n'), count(height, 'height'), count(width, 'width')));
  }

  /** Top-k classes of many images `[{ rgba | data, width, height }]` (ImageData objects work), in one batch. */
  classifyBatch(images, topK = 5) {
    const parts = images.map(pixels);
    const total = parts.reduce((s, p) => s + p.length, 0);
    const all = new Uint8Array(total);
    let at = 0;
    for (const p of parts) {
      all.set(p, at);
      at += p.length;
    }
    const widths = Uint32Array.from(images, (im) => im.width);
    const heights = Uint32Array.from(images, (im) => im.height);
    return guard(() => this._m.classifyRgbaBatch(all, widths, heights, count(topK, 'topK')));
  }

  /** Top-k classes of an encoded JPEG or PNG, decoded exactly as the native CLI does. */
  classifyImageBytes(data, topK = 5) {
    return this.classifyImageBytesBatch([data], topK)[0];
  }

  /** Top-k classes of many encoded images, in one batch. */
  classifyImageBytesBatch(files, topK = 5) {
    const list = files.map((f, i) => bytes(f, `image ${i}`));
    return guard(() => this._m.classifyImageBytes(list, count(topK, 'topK')));
  }

  /** `{ total, correct, accuracy, top5Correct, top5Accuracy, loss }` on the first `limit` images. */
  evaluate(dataset, limit, { batch = 100 } = {}) {
    return guard(() => this._m.evaluate(dataset._d, limit === undefined ? undefined : count(limit, 'limit'), batch));
  }

  /** Sets the preprocessing from `dataset`: `'per-pixel'` (the paper's mean image) or `'per-channel'`. */
  normalizeFrom(dataset, kind = 'per-pixel') {
    return guard(() => this._m.normalizeFrom(dataset._d, kind));
  }

  /** Batch-norm running means and variances, flat. */
  buffers() {
    return guard(() => this._m.buffers());
  }

  setBuffers(flat) {
    return guard(() => this._m.setBuffers(f32(flat)));
  }

  get parameterCount() {
    return guard(() => this._m.parameterCount());
  }

  /** Frees the wasm memory now (otherwise the garbage collector does, eventually). */
  free() {
    this._m.free();
  }
}

/** Labelled images held in wasm memory. */
export class Dataset {
  constructor(handle) {
    if (!(handle instanceof raw.WasmDataset)) throw new TypeError('use Dataset.fromCifar() or Dataset.fromPixels()');
    this._d = handle;
  }

  /** The official `cifar-10-binary.tar.gz` (`split`: 'train' or 'test') or one `.bin` batch file. */
  static fromCifar(data, { split = 'train' } = {}) {
    return guard(() => new Dataset(raw.WasmDataset.fromCifar(bytes(data, 'CIFAR bytes'), split)));
  }

  /** `n` images of `width` x `height` back to back in `pixels` (`format`: 'rgba', 'rgb' or 'chw'),
   * `labels` (n integers), `classes` (names; default: numbered after the largest label). */
  static fromPixels(pixels, labels, { width, height, classes = [], format = 'rgba' } = {}) {
    const data = bytes(pixels, 'pixels');
    const lab = Uint32Array.from(labels);
    return guard(() => new Dataset(raw.WasmDataset.fromPixels(data, lab, count(width, 'width'), count(height, 'height'), classes.map(String), format)));
  }

  get length() {
    return guard(() => this._d.length);
  }

  get width() {
    return guard(() => this._d.width);
  }

  get height() {
    return guard(() => this._d.height);
  }

  get classes() {
    return guard(() => this._d.classes());
  }

  labels() {
    return guard(() => this._d.labels());
  }

  /** Image `i` as RGBA bytes (width * height * 4). */
  imageRgba(i) {
    return guard(() => this._d.imageRgba(count(i, 'index')));
  }

  /** Images `start` to `end` (exclusive), e.g. one worker's shard. */
  slice(start = 0, end = this.length) {
    return guard(() => new Dataset(this._d.slice(count(start, 'start'), count(end, 'end'))));
  }

  /** `[train, val]` with `val` images chosen by a shuffle seeded with `seed`. */
  split(val, seed = 0) {
    return guard(() => this._d.split(count(val, 'val'), seed).map((d) => new Dataset(d)));
  }

  free() {
    this._d.free();
  }
}

const SCHEDULES = ['paper', 'cosine', 'constant'];

/** SGD on a model with the paper's augmentation. The model stays usable (classify, save,
 * evaluate) between steps and sees every update. */
export class Trainer {
  constructor(model, { lr = 0.1, momentum = 0.9, weightDecay = 1e-4, batch = 128, schedule = 'paper', steps = 64000, seed = 0, augment = true, globalBatch = 0, batchOffset = 0, headOnly = false } = {}) {
    if (!(model instanceof Model)) throw new TypeError('new Trainer(model, options) needs a Model');
    if (!SCHEDULES.includes(schedule)) throw new TypeError(`schedule must be one of ${SCHEDULES.join(', ')}, found ${schedule}`);
    this.model = model;
    this._t = guard(() => new raw.WasmTrainer(model._m, lr, momentum, weightDecay, batch, schedule, steps, seed, !!augment, globalBatch, batchOffset, !!headOnly));
  }

  /** One SGD step on the next batch of `dataset`: `{ iteration, loss, accuracy, lr }`. */
  step(dataset) {
    return guard(() => this._t.step(dataset._d));
  }

  /** Model accuracy and loss (evaluation mode) on the first `limit` images of `dataset`. */
  evaluate(dataset, limit, options) {
    return this.model.evaluate(dataset, limit, options);
  }

  // Data-parallel training across workers, each with its own instance, model and the
  // whole data set, splitting every batch (options globalBatch, batchOffset, one seed):
  //   const s = trainer.computeGradients(data);    // every worker, its part of the batch
  //   const g = trainer.gradients();               // to the main thread: average, weighted by s.count
  //   trainer.applyGradients(averaged);            // every worker, same averaged values
  //   model.setBuffers(averagedBuffers)            // from time to time (BN running stats)

  /** Forward and backward on the next batch without updating: `{ loss, accuracy, correct, count }`. */
  computeGradients(dataset) {
    return guard(() => this._t.computeGradients(dataset._d));
  }

  /** The gradients of the last `computeGradients`, flat, as a Float32Array (empty before the first). */
  gradients() {
    return guard(() => this.model._m.gradients());
  }

  /** One SGD update from `gradients` (e.g. averaged across workers; default: this instance's own)
   * and advance the iteration: `{ iteration, lr }`. */
  applyGradients(gradients) {
    return guard(() => {
      if (gradients !== undefined) this.model._m.setGradients(f32(gradients));
      const lr = this._t.applyGradients();
      return { iteration: this._t.iteration - 1, lr };
    });
  }

  /** Batch-norm running statistics of the model, flat. */
  buffers() {
    return this.model.buffers();
  }

  setBuffers(flat) {
    return this.model.setBuffers(flat);
  }

  /** Iterations done so far. */
  get iteration() {
    return guard(() => this._t.iteration);
  }

  /** The learning rate the next update uses. */
  get lr() {
    return guard(() => this._t.lr);
  }

  free() {
    this._t.free();
  }
}
