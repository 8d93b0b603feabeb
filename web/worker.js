// One data-parallel training worker: its own wasm instance, its own copy of the data (the
// CIFAR-10 archive, or the visitor's images as 32x32 RGBA), its part of every batch.
// Protocol (messages from the page): init -> ready; grad -> gradients; step -> stepped (the
// averaged gradients applied and, when asked, the next step's gradients computed, one
// round trip a step); buffers / setBuffers (batch-norm statistics); evaluate ->
// evaluation; save -> weights.
import init, { Model, Dataset, Trainer, batchShare } from './pkg/index.js';

let model, trainer, train, test;

function reply(type, body = {}, transfer = []) {
  postMessage({ type, ...body }, transfer);
}

/** Forward and backward on this worker's share of the next batch: its mean gradients. */
function gradients() {
  const s = trainer.computeGradients(train);
  return { loss: s.loss, correct: s.correct, count: s.count, gradients: trainer.gradients() };
}

const handlers = {
  async init({ data, arch, seed, options, workers, index, start = 'scratch', base, own }) {
    // One worker may use the threaded build's pool (cross-origin isolated pages); several
    // workers already share the cores, one thread each.
    await init(undefined, { threads: workers > 1 ? 1 : 'auto' });
    if (own) {
      // The visitor's images: a fifth held out for testing (the same split in every worker).
      const all = Dataset.fromPixels(new Uint8Array(data), own.labels, { width: own.side, height: own.side, classes: own.classes });
      if (all.length >= 10) [train, test] = all.split(Math.max(2, Math.round(all.length / 5)), seed);
      else train = test = all;
    } else {
      train = Dataset.fromCifar(new Uint8Array(data), { split: 'train' });
      try {
        test = Dataset.fromCifar(new Uint8Array(data), { split: 'test' });
      } catch {
        test = train.slice(0, Math.min(train.length, 1000));
      }
    }
    // Every worker builds the same model from the same seed and the same statistics (or
    // the same file), so all start identical and stay so: they apply the same averaged
    // gradients.
    if (start === 'scratch') {
      model = Model.create(arch, { classes: train.classes.length, seed });
      model.normalizeFrom(train, 'per-pixel');
    } else {
      const loaded = Model.load(new Uint8Array(base));
      model = loaded.withClasses(train.classes, { seed });
      loaded.free();
    }
    // One seed for all: each worker takes its share of the same batches, by the engine's
    // rule (the one `resnet train` uses across MPI ranks).
    const share = batchShare(options.globalBatch, workers, index);
    if (share.size === 0) throw new Error(`a batch of ${options.globalBatch} cannot feed ${workers} workers`);
    trainer = new Trainer(model, {
      ...options, batch: share.size, batchOffset: share.offset, seed: seed + 7919, headOnly: start === 'head',
    });
    const info = model.info();
    reply('ready', { train: train.length, test: test.length, parameters: model.parameterCount, classes: info.classes, architecture: info.architecture });
  },
  grad() {
    const g = gradients();
    reply('gradients', g, [g.gradients.buffer]);
  },
  step({ gradients: averaged, next }) {
    const applied = trainer.applyGradients(averaged);
    const g = next ? gradients() : null;
    reply('stepped', { applied, next: g }, g ? [g.gradients.buffer] : []);
  },
  buffers() {
    const b = trainer.buffers();
    reply('buffers', { buffers: b }, [b.buffer]);
  },
  setBuffers({ buffers }) {
    trainer.setBuffers(buffers);
    reply('buffersSet');
  },
  evaluate({ limit }) {
    const e = trainer.evaluate(test, Math.min(limit, test.length));
    reply('evaluation', e);
  },
  save() {
    const bytes = trainer.model.save();
    reply('weights', { bytes }, [bytes.buffer]);
  },
};

onmessage = async ({ data }) => {
  try {
    await handlers[data.type](data);
  } catch (e) {
    reply('error', { message: e && e.message ? e.message : String(e) });
  }
};
