// resnet-wasm/async: the engine behind Promises. In a browser page the engine runs in a
// module Worker of its own (`async-worker.js`), so classifying and training never block
// the page; in Node, in Workers, or after `configure({ worker: false })` it runs in the
// calling thread, as the synchronous API does.
//
//   const model = await Model.load('resnet20.safetensors');       // URL, bytes, Blob or Response
//   const top = await model.classify(imageElement, { topk: 5 });  // img, ImageData, ImageBitmap, Blob, canvas, { data, width, height }

import { Host } from './host.js';

let useWorker = null;
let wasmInput;
let wasmThreads;
let backend = null;

/** Chooses where the engine runs, before the first call: `{ worker: true }` (a module
 * Worker; the default in a page) or `{ worker: false }` (the calling thread; the default
 * elsewhere). `wasm`: the module's URL or bytes, for the Worker's `init` (default: the
 * `.wasm` beside this file). `threads`: `init`'s option (default `'auto'`: the threaded
 * build where the page is cross-origin isolated). */
export function configure({ worker, wasm, threads } = {}) {
  if (backend) throw new Error('resnet-wasm/async: configure() must come before the first call');
  if (worker !== undefined) useWorker = !!worker;
  wasmInput = wasm;
  wasmThreads = threads;
}

function inPage() {
  return typeof window !== 'undefined' && typeof document !== 'undefined' && typeof Worker !== 'undefined';
}

function workerBackend() {
  const worker = new Worker(new URL('./async-worker.js', import.meta.url), { type: 'module' });
  const waiting = new Map();
  let next = 1;
  let broken = null;
  worker.onmessage = ({ data }) => {
    const w = waiting.get(data.id);
    if (!w) return;
    waiting.delete(data.id);
    if ('error' in data) w.reject(new Error(data.error));
    else w.resolve(data.result);
  };
  worker.onerror = (e) => {
    e.preventDefault?.();
    broken = new Error(`resnet-wasm: the engine's worker failed: ${e.message || 'it could not start'}`);
    for (const w of waiting.values()) w.reject(broken);
    waiting.clear();
  };
  return {
    kind: 'worker',
    request(req, transfer = []) {
      if (broken) return Promise.reject(broken);
      const id = next++;
      return new Promise((resolve, reject) => {
        waiting.set(id, { resolve, reject });
        worker.postMessage({ id, wasm: wasmInput, threads: wasmThreads, ...req }, transfer);
      });
    },
  };
}

function localBackend() {
  let host = null;
  return {
    kind: 'local',
    async request(req) {
      if (!host) {
        const api = await import('./api.js');
        await api.init(wasmInput, { threads: wasmThreads });
        host = new Host();
      }
      return host.handle(req).result;
    },
  };
}

function request(req, transfer) {
  if (!backend) backend = (useWorker ?? inPage()) ? workerBackend() : localBackend();
  return backend.request(req, transfer);
}

/** Where the engine runs: `'worker'` or `'local'` (after the first call; null before). */
export function backendKind() {
  return backend ? backend.kind : null;
}

/** Bytes to send: a copy of the caller's (so that sending cannot detach them) or bytes
 * fetched here (sent without a copy). */
async function ownBytes(source, what) {
  if (typeof source === 'string' || (typeof URL !== 'undefined' && source instanceof URL)) {
    const res = await fetch(source);
    if (!res.ok) throw new Error(`cannot fetch ${source}: HTTP ${res.status}`);
    return new Uint8Array(await res.arrayBuffer());
  }
  if (typeof Response !== 'undefined' && source instanceof Response) return new Uint8Array(await source.arrayBuffer());
  if (typeof Blob !== 'undefined' && source instanceof Blob) return new Uint8Array(await source.arrayBuffer());
  if (source instanceof ArrayBuffer) return new Uint8Array(source.slice(0));
  if (ArrayBuffer.isView(source)) return new Uint8Array(source.buffer.slice(source.byteOffset, source.byteOffset + source.byteLength));
  throw new TypeError(`${what} must be a URL, Uint8Array, ArrayBuffer, Blob or Response`);
}

function drawable(image) {
  const is = (name) => typeof globalThis[name] !== 'undefined' && image instanceof globalThis[name];
  return ['ImageBitmap', 'HTMLImageElement', 'HTMLCanvasElement', 'OffscreenCanvas', 'HTMLVideoElement', 'SVGImageElement', 'VideoFrame'].some(is);
}

/** RGBA pixels of anything drawable on a canvas. */
async function drawnPixels(image) {
  if (typeof HTMLImageElement !== 'undefined' && image instanceof HTMLImageElement && !image.complete) await image.decode();
  const width = image.naturalWidth || image.videoWidth || image.displayWidth || image.width;
  const height = image.naturalHeight || image.videoHeight || image.displayHeight || image.height;
  if (!width || !height) throw new Error('the image has no pixels yet (not loaded?)');
  const canvas = typeof OffscreenCanvas !== 'undefined' ? new OffscreenCanvas(width, height) : Object.assign(document.createElement('canvas'), { width, height });
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  ctx.drawImage(image, 0, 0, width, height);
  const data = ctx.getImageData(0, 0, width, height);
  return { rgba: new Uint8Array(data.data.buffer), width, height };
}

/** One image as `{ rgba, width, height }` (RGBA the engine resizes) or `{ encoded }`
 * (a JPEG or PNG the engine decodes, where this environment cannot draw). */
async function imageInput(image, i) {
  if (image && typeof image === 'object' && (image.data || image.rgba) && image.width !== undefined && image.height !== undefined) {
    const px = image.rgba ?? image.data;
    if (!ArrayBuffer.isView(px)) throw new TypeError(`image ${i}: the pixels must be a Uint8Array or Uint8ClampedArray`);
    return { rgba: new Uint8Array(px.buffer.slice(px.byteOffset, px.byteOffset + px.byteLength)), width: image.width, height: image.height };
  }
  if (drawable(image)) return drawnPixels(image);
  if (typeof Blob !== 'undefined' && image instanceof Blob) {
    if (typeof createImageBitmap === 'function' && typeof OffscreenCanvas !== 'undefined') {
      const bitmap = await createImageBitmap(image);
      try {
        return await drawnPixels(bitmap);
      } finally {
        bitmap.close();
      }
    }
    return { encoded: new Uint8Array(await image.arrayBuffer()) };
  }
  if (image instanceof ArrayBuffer || ArrayBuffer.isView(image)) return { encoded: await ownBytes(image, `image ${i}`) };
  throw new TypeError(`image ${i}: expected an image element, canvas, ImageData, ImageBitmap, Blob, encoded bytes or { data, width, height }`);
}

function topkOf(options) {
  const k = options?.topk ?? options?.topK ?? 5;
  if (!Number.isInteger(k) || k < 1) throw new TypeError(`topk must be a positive integer, found ${k}`);
  return k;
}

class Remote {
  constructor(kind, handle) {
    this._kind = kind;
    this._handle = handle;
  }

  _call(method, args = [], transfer = []) {
    if (this._handle === null) return Promise.reject(new Error(`resnet-wasm: this ${this._kind} was freed`));
    return request({ op: 'call', kind: this._kind, handle: this._handle, method, args }, transfer);
  }

  get _ref() {
    return { $handle: this._handle };
  }

  /** Frees the engine's memory of this object now. */
  async free() {
    if (this._handle === null) return;
    const h = this._handle;
    this._handle = null;
    await request({ op: 'free', handle: h });
  }
}

function floats(v) {
  return v instanceof Float32Array ? v.slice() : Float32Array.from(v);
}

/** A classifier whose engine runs in a Worker (pages) or the calling thread. */
export class Model extends Remote {
  constructor(token, handle, info) {
    if (token !== Model) throw new TypeError('use await Model.load() or await Model.create()');
    super('Model', handle);
    this._info = info;
  }

  /** Our safetensors or a PyTorch checkpoint, from a URL, bytes, a Blob or a Response. */
  static async load(source) {
    const bytes = await ownBytes(source, 'the model');
    const r = await request({ op: 'loadModel', bytes }, [bytes.buffer]);
    return new Model(Model, r.handle, r.info);
  }

  /** A fresh network of the zoo, e.g. `await Model.create('resnet20', { classes: 10, seed: 0 })`. */
  static async create(arch, options = {}) {
    const r = await request({ op: 'createModel', arch: String(arch), options });
    return new Model(Model, r.handle, r.info);
  }

  /** `{ architecture, classes, inputSize, ... }`, kept from the load (no engine call). */
  info() {
    return this._info;
  }

  /** This network with a new classifier for `names`, all else kept (see the sync API). */
  async withClasses(names, options) {
    const r = await this._call('withClasses', [names, options]);
    return new Model(Model, r.handle, r.info);
  }

  /** Top-k classes of one image: an `<img>`, canvas, `ImageData`, `ImageBitmap`, `Blob`,
   * encoded JPEG/PNG bytes, or `{ data | rgba, width, height }` RGBA. */
  async classify(image, options) {
    return (await this.classifyBatch([image], options))[0];
  }

  /** Top-k classes of many images (any of the kinds `classify` takes), in one batch. */
  async classifyBatch(images, options) {
    const k = topkOf(options);
    const inputs = await Promise.all(images.map(imageInput));
    const out = new Array(inputs.length);
    const raw = inputs.flatMap((x, i) => (x.rgba ? [[i, x]] : []));
    const encoded = inputs.flatMap((x, i) => (x.encoded ? [[i, x.encoded]] : []));
    if (raw.length) {
      const imgs = raw.map(([, x]) => x);
      const r = await this._call('classifyBatch', [imgs, k], imgs.map((x) => x.rgba.buffer));
      raw.forEach(([i], j) => (out[i] = r[j]));
    }
    if (encoded.length) {
      const files = encoded.map(([, b]) => b);
      const r = await this._call('classifyImageBytesBatch', [files, k], files.map((b) => b.buffer));
      encoded.forEach(([i], j) => (out[i] = r[j]));
    }
    return out;
  }

  /** Logits of a preprocessed `[n, 3, height, width]` batch. */
  async forward(input, shape) {
    const x = floats(input);
    return this._call('forward', [x, shape], [x.buffer]);
  }

  /** Self-describing safetensors bytes. */
  async save() {
    return this._call('save');
  }

  /** `{ total, correct, accuracy, top5Correct, top5Accuracy, loss }` on a data set. */
  async evaluate(dataset, limit, options) {
    return this._call('evaluate', [dataset._ref, limit, options]);
  }

  /** Sets the preprocessing from training data: 'per-pixel' (the paper's) or 'per-channel'. */
  async normalizeFrom(dataset, kind = 'per-pixel') {
    await this._call('normalizeFrom', [dataset._ref, kind]);
    this._info = await this._call('info');
  }

  /** Batch-norm running statistics, flat. */
  async buffers() {
    return this._call('buffers');
  }

  async setBuffers(flat) {
    const f = floats(flat);
    await this._call('setBuffers', [f], [f.buffer]);
  }
}

/** Labelled images held by the engine. Its sizes are known without an engine call. */
export class Dataset extends Remote {
  constructor(token, d) {
    if (token !== Dataset) throw new TypeError('use await Dataset.fromCifar() or await Dataset.fromPixels()');
    super('Dataset', d.handle);
    this.length = d.length;
    this.width = d.width;
    this.height = d.height;
    this.classes = d.classes;
  }

  /** The official `cifar-10-binary.tar.gz` (or one `.bin` batch) from a URL, bytes, Blob or Response. */
  static async fromCifar(source, options = {}) {
    const bytes = await ownBytes(source, 'the CIFAR data');
    return new Dataset(Dataset, await request({ op: 'cifar', bytes, options }, [bytes.buffer]));
  }

  /** `labels.length` images of `width` x `height` back to back in `pixels` ('rgba', 'rgb' or 'chw'). */
  static async fromPixels(pixels, labels, options) {
    const px = await ownBytes(pixels, 'pixels');
    return new Dataset(Dataset, await request({ op: 'pixels', pixels: px, labels: Array.from(labels), options }, [px.buffer]));
  }

  async labels() {
    return this._call('labels');
  }

  async imageRgba(i) {
    return this._call('imageRgba', [i]);
  }

  async slice(start = 0, end = this.length) {
    return new Dataset(Dataset, await this._call('slice', [start, end]));
  }

  async split(val, seed = 0) {
    return (await this._call('split', [val, seed])).map((d) => new Dataset(Dataset, d));
  }
}

/** SGD on a model with the paper's augmentation, its steps run by the engine's thread.
 * Options as the synchronous `Trainer`'s; a bad option rejects the first call. */
export class Trainer extends Remote {
  constructor(model, options = {}) {
    if (!(model instanceof Model)) throw new TypeError('new Trainer(model, options) needs a Model of resnet-wasm/async');
    super('Trainer', null);
    this.model = model;
    this._ready = request({ op: 'trainer', model: model._handle, options }).then((r) => {
      this._handle = r.handle;
    });
    this._ready.catch(() => {});
  }

  async _call(method, args, transfer) {
    await this._ready;
    return super._call(method, args, transfer);
  }

  /** One SGD step on the next batch of `dataset`: `{ iteration, loss, accuracy, lr }`. */
  async step(dataset) {
    return this._call('step', [dataset._ref]);
  }

  /** Data parallel: forward and backward on this worker's part of the next batch. */
  async computeGradients(dataset) {
    return this._call('computeGradients', [dataset._ref]);
  }

  async gradients() {
    return this._call('gradients');
  }

  /** One update from (averaged) gradients, or this trainer's own: `{ iteration, lr }`. */
  async applyGradients(gradients) {
    if (gradients === undefined) return this._call('applyGradients', []);
    const g = floats(gradients);
    return this._call('applyGradients', [g], [g.buffer]);
  }

  async evaluate(dataset, limit, options) {
    return this._call('evaluate', [dataset._ref, limit, options]);
  }

  async buffers() {
    return this._call('buffers');
  }

  async setBuffers(flat) {
    const f = floats(flat);
    await this._call('setBuffers', [f], [f.buffer]);
  }

  /** `{ iteration, lr }`: iterations done and the learning rate of the next update. */
  async state() {
    return this._call('state');
  }

  async free() {
    await this._ready.catch(() => {});
    return super.free();
  }
}

/** Version, SIMD and threading of the engine that runs the calls. */
export async function engineInfo() {
  return request({ op: 'engineInfo' });
}
