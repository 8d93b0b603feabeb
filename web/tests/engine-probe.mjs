// Runs in the page (the tests import it from the served web/ folder): the computation the
// tests compare between builds, through one instance of the asynchronous API.

/** Configures `api` (a fresh import of `pkg/async.js`) with `options`, then returns the
 * engine's info, resnet20's logits of `images` fixed inputs and the losses of six
 * training steps of a resnet8 on fixed pixels. */
export async function probe(api, options, { images = 4 } = {}) {
  api.configure({ worker: true, ...options });
  const info = await api.engineInfo();
  const model = await api.Model.load('models/resnet20-cifar10.safetensors');
  const x = Float32Array.from({ length: images * 3 * 32 * 32 }, (_, i) => Math.sin(i * 0.731) * 1.7);
  const logits = Array.from(await model.forward(x, [images, 3, 32, 32]));
  const top = await model.classify({ data: new Uint8Array(40 * 30 * 4).map((_, i) => (i * 7) % 256), width: 40, height: 30 }, { topk: 3 });
  const px = new Uint8Array(16 * 32 * 32 * 4).map((_, i) => (i * 29 + (i >> 10) * 7) % 251);
  const data = await api.Dataset.fromPixels(px, Array.from({ length: 16 }, (_, i) => i % 4), { width: 32, height: 32 });
  const net = await api.Model.create('resnet8', { classes: 4, seed: 3 });
  const t = new api.Trainer(net, { batch: 8, steps: 6, lr: 0.05, seed: 1 });
  const losses = [];
  for (let i = 0; i < 6; i++) losses.push((await t.step(data)).loss);
  return { threads: info.threads, relaxed: info.relaxedSimd, logits, top, losses };
}
