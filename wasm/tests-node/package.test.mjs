// Tests of the packed npm package, through its public entry points only: the tarball that
// `cargo xtask wasm` wrote is installed into a fresh project and imported from there.
// Run by `cargo xtask test`, or by hand: `cargo xtask wasm && node --test wasm/tests-node/`.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cifarBatch, encodePng, findTarball, repoRoot, importPackage, installInFreshProject, nativeJson, noise, sharedDir, tarGz } from './helpers.mjs';
import { SIMD_OPS, scanWasm } from './wasm-scan.mjs';

let project;
let lib;
let scratch;

before(async () => {
  project = installInFreshProject(findTarball());
  lib = await importPackage(project);
  scratch = mkdtempSync(join(tmpdir(), 'resnet-wasm-files-'));
});

after(() => {
  for (const d of [project, scratch]) if (d) rmSync(d, { recursive: true, force: true });
});

/** Asserts that wasm and native predictions (top-k lists) agree: top-1 exactly, every probability to `tol`. */
function assertSameAsNative(wasm, native, tol, what) {
  assert.equal(wasm.length, native.length, `${what}: number of results`);
  wasm.forEach((w, i) => {
    const n = native[i].predictions;
    assert.equal(w[0].index, n[0].index, `${what} ${native[i].image}: top-1 wasm ${JSON.stringify(w[0])} native ${JSON.stringify(n[0])}`);
    const byIndex = new Map(n.map((p) => [p.index, p]));
    for (const p of w) {
      const q = byIndex.get(p.index);
      assert.ok(q, `${what} ${native[i].image}: class ${p.index} is in the wasm top-k only`);
      assert.equal(p.label, q.label);
      assert.ok(Math.abs(p.probability - q.probability) <= tol, `${what} ${native[i].image} class ${p.index}: wasm ${p.probability} native ${q.probability}`);
    }
  });
}

describe('package', () => {
  test('installs with types, ES modules and export conditions', () => {
    const dir = join(project, 'node_modules', 'resnet-wasm');
    const pkg = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'));
    const cargoVersion = /\[workspace\.package\][^[]*?version = "([^"]+)"/s.exec(readFileSync(join(repoRoot, 'Cargo.toml'), 'utf8'))[1];
    assert.equal(pkg.name, 'resnet-wasm');
    assert.equal(pkg.type, 'module');
    assert.equal(pkg.version, lib.engineInfo().version, 'package version is the crate version');
    assert.deepEqual(Object.keys(pkg.exports['.']), ['types', 'browser', 'node', 'default']);
    assert.deepEqual(Object.keys(pkg.exports['./async']), ['types', 'browser', 'node', 'default']);
    assert.deepEqual(Object.keys(lib).sort(), ['Dataset', 'Model', 'Trainer', 'batchShare', 'decodeImage', 'default', 'engineInfo', 'init', 'initSync',
      'supportsRelaxedSimd', 'supportsThreads', 'wasmFile'],
      'the public API, and nothing else');
    for (const f of ['index.js', 'node.js', 'api.js', 'index.d.ts', 'async.js', 'async-node.js', 'async-worker.js', 'host.js', 'async.d.ts',
      'resnet_wasm.js', 'resnet_wasm_bg.wasm', 'resnet_wasm_relaxed_bg.wasm', 'pool.js', 'pool-worker.js',
      'threads/resnet_wasm.js', 'threads/resnet_wasm_bg.wasm', 'README.md', 'LICENSE']) {
      assert.ok(existsSync(join(dir, f)), `${f} is in the package`);
    }
    assert.equal(pkg.version, cargoVersion, 'package version is the Cargo version');
    const dts = readFileSync(join(dir, 'index.d.ts'), 'utf8');
    for (const name of ['class Model', 'class Dataset', 'class Trainer', 'classifyImageBytes', 'computeGradients', 'applyGradients']) {
      assert.ok(dts.includes(name), `index.d.ts declares ${name}`);
    }
  });

  test('two builds: SIMD128 and relaxed SIMD (fused multiply-adds), chosen by a probe', () => {
    const dir = join(project, 'node_modules', 'resnet-wasm');
    const plain = scanWasm(readFileSync(join(dir, 'resnet_wasm_bg.wasm')));
    const relaxedBytes = readFileSync(join(dir, 'resnet_wasm_relaxed_bg.wasm'));
    const relaxed = scanWasm(relaxedBytes);
    const MADD = 0x105; // f32x4.relaxed_madd
    assert.equal(plain.bySimdOp.get(MADD) ?? 0, 0, 'the SIMD128 build has no relaxed instruction');
    assert.ok((relaxed.bySimdOp.get(MADD) ?? 0) > 1000, `only ${relaxed.bySimdOp.get(MADD)} f32x4.relaxed_madd in the relaxed build`);
    assert.ok((relaxed.bySimdOp.get(0xe6) ?? 0) < plain.bySimdOp.get(0xe6) / 4, 'most f32x4.mul became relaxed_madd');
    // The probe agrees with what this Node validates, and the entry loaded that build.
    const supported = lib.supportsRelaxedSimd();
    assert.equal(supported, WebAssembly.validate(relaxedBytes), 'the probe and the relaxed build validate alike');
    assert.equal(lib.wasmFile(), supported ? 'resnet_wasm_relaxed_bg.wasm' : 'resnet_wasm_bg.wasm');
    assert.equal(lib.engineInfo().relaxedSimd, supported);
    console.log(`# ${relaxed.bySimdOp.get(MADD)} f32x4.relaxed_madd in the relaxed build; Node ${process.versions.node} runs ${lib.wasmFile()}`);
  });

  test('the threaded build: a shared memory, the pool\'s exports, SIMD128; Node runs one thread', () => {
    const dir = join(project, 'node_modules', 'resnet-wasm', 'threads');
    const bytes = readFileSync(join(dir, 'resnet_wasm_bg.wasm'));
    const module = new WebAssembly.Module(bytes);
    const memory = WebAssembly.Module.imports(module).find((i) => i.kind === 'memory');
    assert.ok(memory, 'the threaded build imports its memory (shared between the Workers)');
    const exported = WebAssembly.Module.exports(module).map((e) => e.name);
    for (const name of ['startThreadPool', 'runPoolWorker', 'threadPoolShared']) {
      assert.ok(exported.includes(name), `the threaded build exports ${name}`);
    }
    assert.ok(scanWasm(bytes).simd > 1000, 'the threaded build uses SIMD128');
    const glue = readFileSync(join(dir, 'resnet_wasm.js'), 'utf8');
    assert.match(glue, /shared:\s*true/, 'its glue makes a shared memory');
    assert.equal(lib.supportsThreads(), false, 'Node is not a cross-origin-isolated page');
    assert.equal(lib.engineInfo().threads, 1);
  });

  test('the module uses SIMD128 instructions', () => {
    const bytes = readFileSync(join(project, 'node_modules', 'resnet-wasm', 'resnet_wasm_bg.wasm'));
    assert.ok(WebAssembly.validate(bytes));
    const scan = scanWasm(bytes);
    assert.ok(scan.functions > 100, `${scan.functions} functions`);
    assert.ok(scan.simd > 1000, `only ${scan.simd} SIMD instructions of ${scan.instructions}`);
    for (const [name, op] of Object.entries(SIMD_OPS)) {
      assert.ok((scan.bySimdOp.get(op) ?? 0) > 0, `no ${name} in the module`);
    }
    const info = lib.engineInfo();
    assert.equal(info.simd128, true);
    assert.equal(info.threads, 1);
    console.log(`# ${scan.simd} SIMD instructions of ${scan.instructions} in ${scan.functions} functions; ${bytes.length} bytes`);
  });

  test('the browser entry needs init() and works after it', () => {
    const script = `
      import { readFileSync } from 'node:fs';
      const m = await import('resnet-wasm');
      const out = {};
      try { m.Model.create('resnet8'); out.before = 'no error'; } catch (e) { out.before = e.message; }
      out.badThreads = await m.init(undefined, { threads: 0 }).then(() => 'no error', (e) => e.message);
      out.supportsThreads = m.supportsThreads();
      // Outside a cross-origin-isolated page, a thread count loads the single-thread build.
      await m.default(readFileSync(new URL(import.meta.resolve('resnet-wasm/resnet_wasm_bg.wasm'))), { threads: 2 });
      out.threads = m.engineInfo().threads;
      await m.init();
      out.info = m.Model.create('resnet8', { classes: 3 }).info().numClasses;
      console.log(JSON.stringify(out));`;
    writeFileSync(join(project, 'browser.mjs'), script);
    const out = JSON.parse(execFileSync('node', ['--conditions=browser', 'browser.mjs'], { cwd: project }).toString());
    assert.match(out.before, /not initialised: await init\(\) first/);
    assert.match(out.badThreads, /threads must be 'auto' or a whole number >= 1, found 0/);
    assert.equal(out.supportsThreads, false);
    assert.equal(out.threads, 1);
    assert.equal(out.info, 3);
  });
});

describe('module systems', () => {
  test('a fresh ES module project imports the package and its async entry', () => {
    const dir = installInFreshProject(findTarball());
    try {
      writeFileSync(join(dir, 'main.mjs'), `
        import init, { Model, engineInfo } from 'resnet-wasm';
        import * as asyncApi from 'resnet-wasm/async';
        await init();
        const m = Model.create('resnet8', { classes: 3, seed: 1 });
        const a = await asyncApi.Model.load(m.save());
        const rgba = new Uint8Array(8 * 8 * 4).fill(200);
        const top = await a.classify({ data: rgba, width: 8, height: 8 }, { topk: 2 });
        console.log(JSON.stringify({ simd: engineInfo().simd128, classes: m.info().numClasses, top: top.length,
          same: top[0].index === m.classify(rgba, 8, 8, 1)[0].index, backend: asyncApi.backendKind() }));`);
      const out = JSON.parse(execFileSync('node', ['main.mjs'], { cwd: dir }).toString());
      assert.deepEqual(out, { simd: true, classes: 3, top: 2, same: true, backend: 'local' });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('CommonJS require() loads the package (Node >= 20.19 resolves it to the ES module)', (t) => {
    const [major, minor] = process.versions.node.split('.').map(Number);
    if (major === 20 && minor < 19) {
      t.skip(`Node ${process.versions.node} cannot require() ES modules`);
      return;
    }
    const dir = mkdtempSync(join(tmpdir(), 'resnet-wasm-cjs-'));
    try {
      writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'cjs-probe', private: true, type: 'commonjs' }));
      execFileSync('npm', ['install', '--offline', '--no-audit', '--no-fund', '--ignore-scripts', findTarball()], { cwd: dir, stdio: 'pipe' });
      writeFileSync(join(dir, 'main.js'), `
        const { Model, Dataset, Trainer, engineInfo } = require('resnet-wasm');
        const asyncApi = require('resnet-wasm/async');
        const m = Model.create('resnet8', { classes: 4, seed: 2 });
        const px = new Uint8Array(8 * 32 * 32 * 4).map((_, i) => (i * 37) % 251);
        const d = Dataset.fromPixels(px, [0, 1, 2, 3, 0, 1, 2, 3], { width: 32, height: 32 });
        const s = new Trainer(m, { batch: 4, steps: 2 }).step(d);
        asyncApi.Model.create('resnet8', { classes: 2 }).then((a) => {
          console.log(JSON.stringify({ version: engineInfo().version, iteration: s.iteration, finite: Number.isFinite(s.loss),
            asyncClasses: a.info().numClasses, classes: typeof Model }));
        });`);
      const out = JSON.parse(execFileSync('node', ['main.js'], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] }).toString());
      assert.equal(out.version, lib.engineInfo().version);
      assert.deepEqual({ ...out, version: undefined }, { version: undefined, iteration: 0, finite: true, asyncClasses: 2, classes: 'function' });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('model', () => {
  test('create, info, save and load round-trip', () => {
    const m = lib.Model.create('resnet20', { classes: 10, seed: 7 });
    const info = m.info();
    assert.equal(info.architecture, 'resnet20');
    assert.equal(info.depth, 20);
    assert.equal(info.parameters, 269722, 'the paper\'s 0.27M with option A shortcuts');
    assert.equal(info.inputSize, 32);
    assert.equal(info.classes[3], 'cat');
    assert.equal(info.preprocessing.kind, 'per_channel');
    const bytes = m.save();
    assert.ok(bytes instanceof Uint8Array);
    const back = lib.Model.load(bytes);
    assert.deepEqual(back.info(), info);
    assert.deepEqual(back.save(), bytes);
    const other = lib.Model.create('resnet20', { classes: 10, seed: 8 }).save();
    assert.notDeepEqual(other, bytes);
    assert.equal(lib.Model.create('resnet8', { classes: 4 }).info().numClasses, 4);
  });

  test('forward gives the logits of a preprocessed batch, image by image', () => {
    const m = lib.Model.create('resnet8', { classes: 10, seed: 3 });
    const one = 3 * 32 * 32;
    const x = Float32Array.from({ length: 2 * one }, (_, i) => Math.sin(i * 0.37));
    const logits = m.forward(x, [2, 3, 32, 32]);
    assert.ok(logits instanceof Float32Array);
    assert.equal(logits.length, 20);
    assert.ok(logits.every(Number.isFinite));
    const second = m.forward(x.subarray(one), [1, 3, 32, 32]);
    second.forEach((v, k) => assert.ok(Math.abs(v - logits[10 + k]) < 1e-4, `logit ${k}: ${v} vs ${logits[10 + k]}`));
    assert.notDeepEqual(Array.from(second), Array.from(logits.subarray(0, 10)));
    assert.throws(() => m.forward(x, [3, 3, 32, 32]), /needs 9216 values, found 6144/);
    assert.throws(() => m.forward(x, [2, 1, 32, 32]), /3 channels|found 1 channels/);
  });

  test('a created model classifies PNGs like the native CLI; RGBA and batch forms agree', () => {
    const model = lib.Model.create('resnet8', { classes: 10, seed: 3 });
    const weights = join(scratch, 'resnet8.safetensors');
    writeFileSync(weights, model.save());
    const sizes = [[32, 32], [45, 37], [20, 24], [64, 64]];
    const files = sizes.map(([w, h], i) => {
      const f = join(scratch, `img${i}.png`);
      writeFileSync(f, encodePng(w, h, noise(w * h * 3, 11 + i)));
      return f;
    });
    const pngs = files.map((f) => readFileSync(f));
    const native = nativeJson(['classify', '--weights', weights, '--top', '10', '--json', ...files]).results;
    const loaded = lib.Model.load(readFileSync(weights));
    const wasm = loaded.classifyImageBytesBatch(pngs, 10);
    assertSameAsNative(wasm, native, 1e-4, 'random resnet8');
    pngs.forEach((png, i) => {
      const img = lib.decodeImage(png);
      assert.equal(img.width, sizes[i][0]);
      assert.equal(img.height, sizes[i][1]);
      assert.equal(img.rgba.length, img.width * img.height * 4);
      const single = loaded.classifyImageBytes(png, 10);
      assert.deepEqual(loaded.classify(img.rgba, img.width, img.height, 10), single, 'RGBA gives what the file gives');
      wasm[i].forEach((p, k) => assert.ok(Math.abs(p.probability - single[k].probability) < 1e-5));
    });
    const decoded = pngs.map((p) => lib.decodeImage(p));
    const batch = loaded.classifyBatch(decoded, 3);
    batch.forEach((b, i) => {
      assert.equal(b.length, 3);
      assert.equal(b[0].index, wasm[i][0].index);
    });
  });

  test('real ResNet-20 weights on real CIFAR-10 images match the native CLI', (t) => {
    const shared = sharedDir();
    const weights = join(shared, 'pretrained/cifar10-akamaster/resnet20-12fca82f.th');
    const images = join(shared, 'data/cifar10-jpeg/test');
    if (!existsSync(weights) || !existsSync(images)) {
      const msg = `${weights} or ${images} is missing (set RESNET_SHARED)`;
      if (process.env.CI) assert.fail(`under CI: ${msg}`);
      t.skip(msg);
      return;
    }
    const classes = readdirSync(images).sort();
    const files = classes.flatMap((c) => ['0000.jpg', '0001.jpg', '0002.jpg'].map((f) => join(images, c, f)));
    const native = nativeJson(['classify', '--weights', weights, '--top', '10', '--json', ...files]).results;
    const model = lib.Model.load(readFileSync(weights));
    const info = model.info();
    assert.equal(info.architecture, 'resnet20');
    assert.equal(info.config.shortcut, 'A');
    const bytes = files.map((f) => readFileSync(f));
    const wasm = model.classifyImageBytesBatch(bytes, 10);
    assertSameAsNative(wasm, native, 1e-4, 'resnet20');
    const correct = wasm.filter((w, i) => w[0].label === classes[Math.floor(i / 3)]).length;
    assert.ok(correct >= 20, `only ${correct} of 30 right`);
    // one image at a time, through RGBA as a canvas gives it
    for (const [i, b] of bytes.entries()) {
      const img = lib.decodeImage(b);
      const top = model.classify(img.rgba, img.width, img.height, 1);
      assert.equal(top[0].index, native[i].predictions[0].index);
      assert.ok(Math.abs(top[0].probability - native[i].predictions[0].probability) <= 1e-4);
    }
  });
});

/** 4 classes of 32x32 RGBA images, told apart by colour and by which half is bright. */
function toyPixels(n, seed) {
  const px = new Uint8Array(n * 32 * 32 * 4);
  const labels = [];
  const rnd = noise(n * 32 * 32, seed);
  for (let i = 0; i < n; i++) {
    const l = i % 4;
    labels.push(l);
    for (let y = 0; y < 32; y++) {
      for (let x = 0; x < 32; x++) {
        const p = (i * 1024 + y * 32 + x) * 4;
        const bright = (l < 2 ? y < 16 : x < 16) ? 170 : 40;
        const v = bright + (rnd[i * 1024 + y * 32 + x] % 60);
        px[p] = l % 2 === 0 ? v : 255 - v;
        px[p + 1] = v;
        px[p + 2] = l % 2 === 0 ? 255 - v : v;
        px[p + 3] = 255;
      }
    }
  }
  return { px, labels };
}

describe('training', () => {
  test('30 steps of a resnet8 make the loss fall', () => {
    const { px, labels } = toyPixels(256, 5);
    const data = lib.Dataset.fromPixels(px, labels, { width: 32, height: 32, classes: ['a', 'b', 'c', 'd'] });
    assert.equal(data.length, 256);
    assert.deepEqual(data.classes, ['a', 'b', 'c', 'd']);
    const model = lib.Model.create('resnet8', { classes: 4, seed: 1 });
    model.normalizeFrom(data, 'per-pixel');
    assert.equal(model.info().preprocessing.kind, 'per_pixel_mean');
    const trainer = new lib.Trainer(model, { lr: 0.05, momentum: 0.9, weightDecay: 1e-4, batch: 32, schedule: 'paper', steps: 30, seed: 2 });
    const start = performance.now();
    const stats = [];
    for (let i = 0; i < 30; i++) stats.push(trainer.step(data));
    const seconds = (performance.now() - start) / 1000;
    console.log(`# resnet8 batch 32: ${(30 / seconds).toFixed(2)} steps/s; losses ${stats.map((s) => s.loss.toFixed(2)).join(' ')}`);
    stats.forEach((s, i) => assert.equal(s.iteration, i));
    assert.equal(stats[0].lr, 0.05);
    assert.ok(Math.abs(stats[29].lr - 0.0005) < 1e-9, `paper schedule lr at the end: ${stats[29].lr}`);
    assert.equal(trainer.iteration, 30);
    const first = stats.slice(0, 5).reduce((s, x) => s + x.loss, 0) / 5;
    const last = stats.slice(-5).reduce((s, x) => s + x.loss, 0) / 5;
    assert.ok(last < 0.6 * first, `loss went from ${first} to ${last}`);
    const ev = trainer.evaluate(data, 128);
    assert.equal(ev.total, 128);
    assert.ok(ev.accuracy > 0.5, `accuracy after training ${ev.accuracy}`);
    // the model sees the updates: it is saved trained, and classifies as trained
    const back = lib.Model.load(model.save());
    assert.deepEqual(back.evaluate(data, 128), ev);
  });

  test('batchShare splits a batch among workers, the first ones larger', () => {
    const shares = [0, 1, 2].map((i) => lib.batchShare(7, 3, i));
    assert.deepEqual(shares, [{ offset: 0, size: 3 }, { offset: 3, size: 2 }, { offset: 5, size: 2 }]);
    assert.throws(() => lib.batchShare(7, 3, 3), /worker 3 of 3 does not exist/);
    assert.throws(() => lib.batchShare(7, 0, 0), /worker 0 of 0 does not exist/);
  });

  test('data-parallel steps: gradients out, averaged gradients and BN statistics in', () => {
    const { px, labels } = toyPixels(64, 9);
    const data = lib.Dataset.fromPixels(px, labels, { width: 32, height: 32 });
    assert.deepEqual(data.classes, ['class 0', 'class 1', 'class 2', 'class 3']);
    const start = lib.Model.create('resnet8', { classes: 4, seed: 4 }).save();
    // two workers split every batch of 32: the first 16 images and the last 16
    const workers = [0, 16].map((batchOffset) => {
      const model = lib.Model.load(start);
      return { model, trainer: new lib.Trainer(model, { lr: 0.1, batch: 16, globalBatch: 32, batchOffset, schedule: 'constant', seed: 6 }) };
    });
    assert.throws(() => new lib.Trainer(lib.Model.load(start), { batch: 16, globalBatch: 20, batchOffset: 8 }), /do not fit in a global batch of 20/);
    for (let step = 0; step < 3; step++) {
      const grads = workers.map((w) => {
        const s = w.trainer.computeGradients(data);
        assert.equal(s.count, 16);
        assert.ok(Number.isFinite(s.loss));
        const g = w.trainer.gradients();
        assert.ok(g instanceof Float32Array);
        assert.equal(g.length, w.model.parameterCount);
        return g;
      });
      assert.notDeepEqual(grads[0], grads[1]);
      const avg = grads[0].map((v, k) => (v + grads[1][k]) / 2);
      for (const w of workers) assert.deepEqual(w.trainer.applyGradients(avg), { iteration: step, lr: 0.1 });
      const bufs = workers.map((w) => w.trainer.buffers());
      assert.notDeepEqual(bufs[0], bufs[1]);
      const avgBufs = bufs[0].map((v, k) => (v + bufs[1][k]) / 2);
      for (const w of workers) w.trainer.setBuffers(avgBufs);
    }
    // same start, same averaged updates, same statistics: the replicas are identical
    assert.deepEqual(workers[0].model.save(), workers[1].model.save());
    assert.notDeepEqual(workers[0].model.save(), start);
    assert.throws(() => workers[0].trainer.applyGradients(new Float32Array(3)), /expected \d+ gradient values, found 3/);
    assert.throws(() => workers[0].model.setBuffers(new Float32Array(3)), /running-statistic values, found 3/);
  });
});

describe('data sets', () => {
  test('fromCifar reads a .bin batch and the official .tar.gz layout', () => {
    const labels = [3, 1, 4, 1, 5, 9, 2, 6];
    const bin = cifarBatch(labels, 1);
    const d = lib.Dataset.fromCifar(bin);
    assert.equal(d.length, 8);
    assert.equal(d.width, 32);
    assert.deepEqual(Array.from(d.labels()), labels);
    assert.equal(d.classes[9], 'truck');
    const rgba = d.imageRgba(0);
    assert.equal(rgba[0], bin[1]);
    assert.equal(rgba[1], bin[1 + 1024]);
    assert.equal(rgba[3], 255);
    const files = { 'cifar-10-batches-bin/batches.meta.txt': Buffer.from('a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n') };
    for (let k = 1; k <= 5; k++) files[`cifar-10-batches-bin/data_batch_${k}.bin`] = cifarBatch([k, k, k], 10 * k);
    files['cifar-10-batches-bin/test_batch.bin'] = cifarBatch([7, 8], 99);
    const tgz = tarGz(files);
    const train = lib.Dataset.fromCifar(tgz);
    assert.equal(train.length, 15);
    assert.deepEqual(train.classes, ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j']);
    const test = lib.Dataset.fromCifar(tgz, { split: 'test' });
    assert.deepEqual(Array.from(test.labels()), [7, 8]);
    const [tr, val] = train.split(5, 1);
    assert.equal(tr.length + val.length, 15);
    // a model evaluates it
    const ev = lib.Model.create('resnet8').evaluate(test);
    assert.equal(ev.total, 2);
  });

  test('fromPixels accepts rgba, rgb and chw layouts', () => {
    const rgba = noise(2 * 4 * 3 * 4, 3);
    const rgb = rgba.filter((_, i) => i % 4 !== 3);
    const a = lib.Dataset.fromPixels(rgba, [0, 1], { width: 4, height: 3 });
    const b = lib.Dataset.fromPixels(rgb, [0, 1], { width: 4, height: 3, format: 'rgb' });
    const ra = a.imageRgba(1);
    assert.deepEqual(ra, b.imageRgba(1));
    assert.deepEqual(ra.filter((_, i) => i % 4 !== 3), rgb.subarray(36, 72));
  });
});

describe('errors', () => {
  test('bad input gives JS exceptions with the engine message, and the instance goes on', () => {
    assert.throws(() => lib.Model.load(new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])), (e) => e instanceof Error && e.message.length > 10 && !/unreachable/.test(e.message));
    assert.throws(() => lib.Model.load(new TextEncoder().encode('not a model at all, just some text that is long enough')), Error);
    assert.throws(() => lib.Model.create('resnet9'), /resnet9/);
    assert.throws(() => lib.Dataset.fromCifar(new Uint8Array(3074)), /byte offset/);
    assert.throws(() => lib.Dataset.fromPixels(new Uint8Array(10), [0], { width: 2, height: 2 }), /need 16 bytes, found 10/);
    const m = lib.Model.create('resnet8');
    assert.throws(() => m.classify(new Uint8Array(10), 2, 2, 1), /2x2 RGBA needs 16 bytes, found 10/);
    assert.throws(() => m.classifyImageBytes(new Uint8Array([0xff, 0xd8, 0xff, 0, 1, 2])), Error);
    assert.throws(() => new lib.Trainer(m, { schedule: 'linear' }), /schedule/);
    assert.throws(() => new lib.Trainer(m, { batch: 0 }), /batch size must be positive/);
    const tiny = lib.Dataset.fromPixels(new Uint8Array(4 * 4 * 4), [12], { width: 4, height: 4 });
    assert.throws(() => new lib.Trainer(m, { batch: 1 }).step(tiny), /13 classes, the model only 10/);
    // still fine afterwards
    assert.equal(m.classify(new Uint8Array(16), 2, 2, 1).length, 1);
  });

  test('a panic is reported and the instance refuses further calls (the tests\' own build)', () => {
    // The npm package has no way to make the engine panic; the tests' build (feature
    // test-hooks) panics in Model.create('panic-for-tests').
    const tarball = process.env.RESNET_WASM_TEST_TARBALL;
    if (!tarball) {
      assert.ok(!process.env.CI, 'CI runs this test: RESNET_WASM_TEST_TARBALL is unset');
      return;
    }
    const dir = installInFreshProject(tarball);
    try {
      const script = `
        const m = await import('resnet-wasm');
        const out = {};
        try { m.Model.create('panic-for-tests'); out.panic = 'no error'; } catch (e) { out.panic = e.message; }
        try { m.Model.create('resnet8'); out.after = 'no error'; } catch (e) { out.after = e.message; }
        console.log(JSON.stringify(out));`;
      writeFileSync(join(dir, 'panic.mjs'), script);
      const res = execFileSync('node', ['panic.mjs'], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
      const out = JSON.parse(res.toString());
      assert.match(out.panic, /resnet-wasm panicked: [\s\S]*deliberate panic of the test-hooks build/);
      assert.match(out.after, /panicked earlier [\s\S]* cannot be used any more/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('the npm package holds no test hook', () => {
    assert.throws(() => lib.Model.create('panic-for-tests'), /panic-for-tests/, 'an unknown architecture, not a panic');
    assert.equal(lib.Model.create('resnet8').info().numClasses, 10, 'the instance is fine afterwards');
    const dir = join(project, 'node_modules', 'resnet-wasm');
    for (const f of ['resnet_wasm_bg.wasm', 'resnet_wasm_relaxed_bg.wasm', 'threads/resnet_wasm_bg.wasm']) {
      assert.equal(readFileSync(join(dir, f)).indexOf('panic-for-tests'), -1, `${f} has the test hook`);
    }
    for (const f of readdirSync(dir).filter((f) => /\.(js|ts)$/.test(f))) {
      assert.doesNotMatch(readFileSync(join(dir, f), 'utf8'), /ForTests|test-hooks|panic-for-tests/, `${f} mentions a test hook`);
    }
  });
});
