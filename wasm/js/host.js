// The engine side of the asynchronous API (`async.js`): holds models, data sets and
// trainers of the synchronous API by number and runs the requests made of them. It runs
// in the engine's Worker (`async-worker.js`) in browsers, or in the calling thread.
// A request is `{ op, ... }`; `handle(request)` returns `{ result, transfer }`.

import { Model, Dataset, Trainer, engineInfo, decodeImage } from './api.js';

/** What the asynchronous API may call on each kind of object. */
const METHODS = {
  Model: ['info', 'withClasses', 'save', 'classify', 'classifyBatch', 'classifyImageBytes', 'classifyImageBytesBatch', 'forward', 'evaluate', 'normalizeFrom', 'buffers', 'setBuffers'],
  Dataset: ['labels', 'imageRgba', 'slice', 'split'],
  Trainer: ['step', 'computeGradients', 'gradients', 'applyGradients', 'buffers', 'setBuffers', 'evaluate', 'state'],
};

export class Host {
  constructor() {
    this.objects = new Map();
    this.next = 1;
  }

  keep(object) {
    const id = this.next++;
    this.objects.set(id, object);
    return id;
  }

  get(id, kind) {
    const o = this.objects.get(id);
    if (!o) throw new Error(`resnet-wasm: this ${kind} was freed`);
    return o;
  }

  /** A data set as the asynchronous side describes it: its number and its sizes. */
  dataset(d) {
    return { handle: this.keep(d), length: d.length, width: d.width, height: d.height, classes: d.classes };
  }

  /** Arguments that name objects of this host (`{ handle }`) become the objects. */
  resolve(arg) {
    if (arg && typeof arg === 'object' && typeof arg.$handle === 'number') return this.get(arg.$handle, 'object');
    return arg;
  }

  handle(req) {
    switch (req.op) {
      case 'engineInfo':
        return { result: engineInfo() };
      case 'decodeImage': {
        const img = decodeImage(req.bytes);
        return { result: img, transfer: [img.rgba.buffer] };
      }
      case 'loadModel':
        return this.model(Model.load(req.bytes));
      case 'createModel':
        return this.model(Model.create(req.arch, req.options));
      case 'cifar':
        return { result: this.dataset(Dataset.fromCifar(req.bytes, req.options)) };
      case 'pixels':
        return { result: this.dataset(Dataset.fromPixels(req.pixels, req.labels, req.options)) };
      case 'trainer': {
        const model = this.get(req.model, 'model');
        return { result: { handle: this.keep(new Trainer(model, req.options)) } };
      }
      case 'call':
        return this.call(req);
      case 'free': {
        const o = this.objects.get(req.handle);
        if (o) {
          this.objects.delete(req.handle);
          o.free();
        }
        return { result: null };
      }
      default:
        throw new Error(`resnet-wasm: unknown request ${req.op}`);
    }
  }

  model(m) {
    return { result: { handle: this.keep(m), info: m.info() } };
  }

  call({ handle, kind, method, args = [] }) {
    if (!METHODS[kind] || !METHODS[kind].includes(method)) throw new Error(`resnet-wasm: ${kind}.${method} cannot be called`);
    const target = this.get(handle, kind);
    if (kind === 'Trainer' && method === 'state') return { result: { iteration: target.iteration, lr: target.lr } };
    const out = target[method](...args.map((a) => this.resolve(a)));
    if (out instanceof Model) return this.model(out);
    if (out instanceof Dataset) return { result: this.dataset(out) };
    if (Array.isArray(out) && out[0] instanceof Dataset) return { result: out.map((d) => this.dataset(d)) };
    if (ArrayBuffer.isView(out)) return { result: out, transfer: [out.buffer] };
    return { result: out === undefined ? null : out };
  }
}
