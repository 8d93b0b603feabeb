// Throughput of the packed module in Node (not a test; nothing is asserted):
//   node wasm/tests-node/bench.mjs [path/to/package/node.js]
import { pathToFileURL } from 'node:url';
import { join } from 'node:path';
import { repoRoot } from './helpers.mjs';

const entry = process.argv[2] ?? join(process.env.CARGO_TARGET_DIR ?? join(repoRoot, 'target'), 'wasm-pkg/package/node.js');
const { Model, Dataset, Trainer, engineInfo } = await import(pathToFileURL(entry).href);

function time(f, minSeconds = 2) {
  f();
  let n = 0;
  const start = performance.now();
  while (performance.now() - start < minSeconds * 1000) {
    f();
    n++;
  }
  return (performance.now() - start) / 1000 / n;
}

const images = (count) =>
  Array.from({ length: count }, (_, i) => ({ width: 32, height: 32, data: Uint8Array.from({ length: 32 * 32 * 4 }, (_, k) => (k * 7 + i * 13) & 255) }));

console.log(engineInfo());
for (const arch of ['resnet20', 'resnet56']) {
  const m = Model.create(arch, { classes: 10 });
  const one = images(1);
  const many = images(32);
  const t1 = time(() => m.classifyBatch(one, 1));
  const t32 = time(() => m.classifyBatch(many, 1));
  console.log(`${arch} classify: batch 1 ${(1 / t1).toFixed(1)} images/s (${(t1 * 1e3).toFixed(1)} ms), batch 32 ${(32 / t32).toFixed(1)} images/s`);
}
const px = new Uint8Array(256 * 32 * 32 * 4).map((_, i) => (i * 31) & 255);
const labels = Array.from({ length: 256 }, (_, i) => i % 10);
const data = Dataset.fromPixels(px, labels, { width: 32, height: 32 });
for (const arch of ['resnet8', 'resnet20']) {
  const m = Model.create(arch, { classes: 10 });
  m.normalizeFrom(data);
  const t = new Trainer(m, { lr: 0.05, batch: 32, schedule: 'constant' });
  const s = time(() => t.step(data), 4);
  console.log(`${arch} training, batch 32: ${(1 / s).toFixed(2)} steps/s (${(32 / s).toFixed(0)} images/s)`);
}
