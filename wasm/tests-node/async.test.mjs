// Tests of the asynchronous API (`resnet-wasm/async`) in Node, where the engine runs in
// the calling thread; web/tests/ runs it in a page, where it runs in a Worker.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { encodePng, findTarball, importPackage, installInFreshProject, noise } from './helpers.mjs';

let project;
let sync;
let lib;

before(async () => {
  project = installInFreshProject(findTarball());
  sync = await importPackage(project);
  writeFileSync(join(project, 'probe-async.mjs'), "export * from 'resnet-wasm/async';\n");
  lib = await import(pathToFileURL(join(project, 'probe-async.mjs')).href);
});

after(() => {
  if (project) rmSync(project, { recursive: true, force: true });
});

describe('async API', () => {
  test('load from bytes, a Blob and a Response; classify every kind of input as the sync API does', async () => {
    const weights = sync.Model.create('resnet8', { classes: 10, seed: 5 }).save();
    const model = await lib.Model.load(weights);
    assert.equal(lib.backendKind(), 'local');
    assert.equal(model.info().architecture, 'resnet8');
    const fromBlob = await lib.Model.load(new Blob([weights]));
    const fromResponse = await lib.Model.load(new Response(weights));
    assert.deepEqual(fromBlob.info(), model.info());
    assert.deepEqual(fromResponse.info(), model.info());
    assert.equal(weights.length > 1000 && weights[0] !== undefined, true, 'the caller\'s bytes are not detached');

    const reference = sync.Model.load(weights);
    const rgba = new Uint8Array(noise(40 * 30 * 4, 3));
    const want = reference.classify(rgba, 40, 30, 3);
    const a = await model.classify({ data: rgba, width: 40, height: 30 }, { topk: 3 });
    assert.deepEqual(a, want);
    assert.equal(rgba.length, 40 * 30 * 4, 'the caller\'s pixels are not detached');
    assert.deepEqual(await model.classify({ rgba: new Uint8ClampedArray(rgba), width: 40, height: 30 }, { topk: 3 }), want);
    assert.equal((await model.classify({ data: rgba, width: 40, height: 30 })).length, 5, 'top 5 by default');

    const png = encodePng(24, 20, noise(24 * 20 * 3, 8));
    const fromFile = reference.classifyImageBytes(png, 4);
    assert.deepEqual(await model.classify(png, { topk: 4 }), fromFile, 'encoded bytes');
    assert.deepEqual(await model.classify(new Blob([png]), { topk: 4 }), fromFile, 'a Blob (decoded by the engine in Node)');
    const both = await model.classifyBatch([png, { data: rgba, width: 40, height: 30 }], { topk: 3 });
    assert.deepEqual(both[0], fromFile.slice(0, 3));
    assert.deepEqual(both[1], want);

    const x = Float32Array.from({ length: 3 * 32 * 32 }, (_, i) => Math.cos(i));
    assert.deepEqual(await model.forward(x, [1, 3, 32, 32]), reference.forward(x, [1, 3, 32, 32]));
    assert.deepEqual(await model.save(), weights);
    const info = await lib.engineInfo();
    assert.equal(info.simd128, true);
    assert.throws(() => lib.configure({ worker: false }), /before the first call/);
  });

  test('errors reject with the engine message; freed objects refuse calls', async () => {
    await assert.rejects(lib.Model.load(new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12])), Error);
    await assert.rejects(lib.Model.create('resnet9'), /resnet9/);
    await assert.rejects(lib.Model.load(42), /must be a URL, Uint8Array/);
    const m = await lib.Model.create('resnet8');
    await assert.rejects(m.classify({ data: new Uint8Array(10), width: 2, height: 2 }), /2x2 RGBA\) needs bytes 0\.\.16, the buffer has 10/);
    await assert.rejects(m.classify({ data: new Uint8Array(16), width: 2, height: 2 }, { topk: 0 }), /topk must be a positive integer/);
    await assert.rejects(m.classify(12), /expected an image element/);
    const t = new lib.Trainer(m, { schedule: 'linear' });
    await assert.rejects(t.state(), /schedule/);
    await m.free();
    await assert.rejects(m.classify({ data: new Uint8Array(16), width: 2, height: 2 }), /was freed/);
    assert.throws(() => new lib.Trainer({}, {}), /needs a Model/);
  });

  test('a trainer steps, evaluates and updates the model it was given', async () => {
    const n = 64;
    const px = new Uint8Array(n * 32 * 32 * 4);
    const labels = [];
    for (let i = 0; i < n; i++) {
      labels.push(i % 2);
      px.fill(i % 2 ? 220 : 30, i * 4096, (i + 1) * 4096);
    }
    const data = await lib.Dataset.fromPixels(px, labels, { width: 32, height: 32, classes: ['dark', 'light'] });
    assert.equal(data.length, n);
    assert.deepEqual(data.classes, ['dark', 'light']);
    assert.deepEqual(Array.from(await data.labels()), labels);
    const [train, val] = await data.split(16, 1);
    assert.equal(train.length + val.length, n);
    const half = await data.slice(0, 32);
    assert.equal(half.length, 32);

    const model = await lib.Model.create('resnet8', { classes: 2, seed: 1 });
    await model.normalizeFrom(data);
    assert.equal(model.info().preprocessing.kind, 'per_pixel_mean');
    const trainer = new lib.Trainer(model, { lr: 0.05, batch: 16, steps: 20, schedule: 'constant', seed: 3 });
    const steps = [];
    for (let i = 0; i < 20; i++) steps.push(await trainer.step(data));
    steps.forEach((s, i) => assert.equal(s.iteration, i));
    assert.deepEqual(await trainer.state(), { iteration: 20, lr: 0.05 });
    const ev = await trainer.evaluate(data);
    assert.equal(ev.total, n);
    assert.ok(ev.accuracy > 0.9, `accuracy ${ev.accuracy}`);
    // The same run through the synchronous API gives the same model, bit for bit.
    const sm = sync.Model.create('resnet8', { classes: 2, seed: 1 });
    const sd = sync.Dataset.fromPixels(px, labels, { width: 32, height: 32, classes: ['dark', 'light'] });
    sm.normalizeFrom(sd);
    const st = new sync.Trainer(sm, { lr: 0.05, batch: 16, steps: 20, schedule: 'constant', seed: 3 });
    for (let i = 0; i < 20; i++) st.step(sd);
    assert.deepEqual(await model.save(), sm.save());
    const top = await model.classify({ data: px.subarray(4096, 8192), width: 32, height: 32 }, { topk: 1 });
    assert.equal(top[0].index, 1, 'a light image');
  });
});
