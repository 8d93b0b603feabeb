// The web page in real Chromium (playwright-core driving Debian's /usr/bin/chromium):
// loads without console errors, is usable by keyboard and screen readers, classifies
// like the native CLI through the asynchronous API (in its Worker), trains on 2 workers
// from a downloaded archive.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { png, cifarTarGz, serve } from './fixtures.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const webRoot = resolve(here, '..');
const repo = resolve(webRoot, '..');
const shots = resolve(repo, 'target', 'web-screenshots');
const resnetBin = process.env.RESNET_BIN || resolve(repo, 'target', 'release', 'resnet');
const shared = process.env.RESNET_SHARED || resolve(repo, '..', 'shared');
const work = mkdtempSync(join(tmpdir(), 'resnet-web-'));

let browser, site, page;
const problems = [];
const cifar = cifarTarGz(40, 50);

before(async () => {
  assert.ok(existsSync(join(webRoot, 'pkg', 'index.js')), 'web/pkg is missing: run `cargo xtask web` (or `cargo xtask test`)');
  mkdirSync(shots, { recursive: true });
  site = await serve(webRoot, { '/data/cifar-10-binary.tar.gz': cifar });
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream'],
  });
  page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  page.on('console', (m) => m.type() === 'error' && problems.push(`console: ${m.text()}`));
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('response', (r) => r.status() >= 400 && problems.push(`HTTP ${r.status()} for ${r.url()}`));
  await page.goto(site.url, { waitUntil: 'commit' });
  await page.waitForFunction(() => window.resnetPage && window.resnetPage.ready, null, { timeout: 60_000 });
});

after(async () => {
  await browser?.close();
  site?.server.close();
});

test('the page loads without console errors', async () => {
  assert.equal(await page.isVisible('#classify'), true);
  const err = await page.textContent('#error');
  assert.equal(await page.isHidden('#error'), true, err);
  assert.deepEqual(problems, []);
});

test('keyboard and screen readers: every control reachable by Tab, ARIA tabs, live regions, chart texts', async () => {
  // roles and live regions
  assert.equal(await page.getAttribute('nav', 'role'), 'tablist');
  for (const [tab, panel] of [['tab-classify', 'classify'], ['tab-train', 'train']]) {
    assert.equal(await page.getAttribute(`#${tab}`, 'role'), 'tab');
    assert.equal(await page.getAttribute(`#${tab}`, 'aria-controls'), panel);
    assert.equal(await page.getAttribute(`#${panel}`, 'role'), 'tabpanel');
    assert.equal(await page.getAttribute(`#${panel}`, 'aria-labelledby'), tab);
  }
  assert.equal(await page.getAttribute('#tab-classify', 'aria-selected'), 'true');
  assert.equal(await page.getAttribute('#tab-train', 'aria-selected'), 'false');
  assert.equal(await page.getAttribute('#train-status', 'aria-live'), 'polite');
  assert.equal(await page.getAttribute('#results', 'aria-live'), 'polite');
  assert.equal(await page.getAttribute('#error', 'role'), 'alert');
  for (const c of ['#loss-chart', '#error-chart', '#preview']) {
    assert.equal(await page.getAttribute(c, 'role'), 'img');
    assert.ok((await page.getAttribute(c, 'aria-label')).length > 5, `${c} has a text alternative`);
  }
  // Tab order: what Tab reaches from the top of the page.
  const reached = async (n) => {
    await page.evaluate(() => document.activeElement && document.activeElement.blur());
    const ids = new Set();
    for (let i = 0; i < n; i++) {
      await page.keyboard.press('Tab');
      ids.add(await page.evaluate(() => document.activeElement && document.activeElement.id));
    }
    return ids;
  };
  const classify = await reached(8);
  for (const id of ['tab-classify', 'image-file', 'camera', 'weights-file']) assert.ok(classify.has(id), `Tab reaches #${id}: ${[...classify]}`);
  // Arrow keys move between tabs; the selected tab's panel shows.
  await page.focus('#tab-classify');
  await page.keyboard.press('ArrowRight');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'tab-train');
  assert.equal(await page.getAttribute('#tab-train', 'aria-selected'), 'true');
  assert.equal(await page.isVisible('#train'), true);
  assert.equal(await page.isHidden('#classify'), true);
  const train = await reached(20);
  for (const id of ['tab-train', 'arch', 'data-file', 'data-url', 'lr', 'momentum', 'wd', 'batch', 'iters', 'schedule', 'workers',
    'eval-every', 'eval-limit', 'start']) {
    assert.ok(train.has(id), `Tab reaches #${id}: ${[...train]}`);
  }
  // The default number of workers is the machine's.
  assert.equal(await page.inputValue('#workers'), String(await page.evaluate(() => navigator.hardwareConcurrency)));
  await page.keyboard.press('Shift+Tab');
  await page.focus('#tab-train');
  await page.keyboard.press('Home');
  assert.equal(await page.getAttribute('#tab-classify', 'aria-selected'), 'true');
  assert.equal(await page.isVisible('#classify'), true);
  assert.deepEqual(problems, []);
});

test('the asynchronous API classifies every kind of image alike, in a Worker', async () => {
  const out = await page.evaluate(async () => {
    const api = await import('./pkg/async.js');
    const model = await api.Model.load('models/resnet20-cifar10.safetensors');
    const canvas = new OffscreenCanvas(40, 30);
    const ctx = canvas.getContext('2d');
    for (let y = 0; y < 30; y++) for (let x = 0; x < 40; x++) {
      ctx.fillStyle = `rgb(${(x * 6) % 256},${(y * 8) % 256},${((x + y) * 3) % 256})`;
      ctx.fillRect(x, y, 1, 1);
    }
    const data = ctx.getImageData(0, 0, 40, 30);
    const blob = await canvas.convertToBlob({ type: 'image/png' });
    const bitmap = await createImageBitmap(blob);
    const img = new Image();
    img.src = URL.createObjectURL(blob);
    await img.decode();
    const kinds = { imageData: data, rgba: { data: new Uint8Array(data.data), width: 40, height: 30 }, blob, bitmap, img, canvas };
    const results = {};
    for (const [k, v] of Object.entries(kinds)) results[k] = await model.classify(v, { topk: 3 });
    let rejected = '';
    try {
      await model.classify({ data: new Uint8Array(5), width: 2, height: 2 });
    } catch (e) {
      rejected = e.message;
    }
    const t = new api.Trainer(await api.Model.create('resnet8', { classes: 2 }), { batch: 4, steps: 2 });
    const px = new Uint8Array(8 * 32 * 32 * 4).map((_, i) => (i * 31) % 253);
    const step = await t.step(await api.Dataset.fromPixels(px, [0, 1, 0, 1, 0, 1, 0, 1], { width: 32, height: 32 }));
    return { results, rejected, backend: api.backendKind(), step, dataIntact: data.data.length };
  });
  assert.equal(out.backend, 'worker');
  assert.ok(page.workers().some((w) => /async-worker\.js$/.test(w.url())), 'the engine runs in its Worker');
  const ref = out.results.rgba;
  assert.equal(ref.length, 3);
  for (const [k, r] of Object.entries(out.results)) {
    assert.equal(r[0].index, ref[0].index, `${k}: ${JSON.stringify(r)} vs ${JSON.stringify(ref)}`);
    r.forEach((p, i) => assert.ok(Math.abs(p.probability - ref[i].probability) < 1e-6, `${k}`));
  }
  assert.match(out.rejected, /needs bytes 0\.\.16/);
  assert.equal(out.step.iteration, 0);
  assert.ok(Number.isFinite(out.step.loss));
  assert.equal(out.dataIntact, 40 * 30 * 4, 'the caller\'s ImageData is not detached');
  assert.deepEqual(problems, []);
});

test('Chromium runs the relaxed-SIMD build, and it computes what the SIMD128 build computes', async () => {
  assert.equal(await page.evaluate(() => window.resnetPage.engine.relaxedSimd), true, 'the page\'s engine is the relaxed build');
  const out = await page.evaluate(async () => {
    const { probe } = await import('./tests/engine-probe.mjs');
    // A module instance (and engine Worker) of its own for each build.
    const run = async (file, tag) => probe(await import(`./pkg/async.js?${tag}`), { wasm: new URL(`pkg/${file}`, location.href).href });
    return { plain: await run('resnet_wasm_bg.wasm', 'simd128'), relaxed: await run('resnet_wasm_relaxed_bg.wasm', 'relaxed') };
  });
  assert.equal(out.plain.relaxed, false);
  assert.equal(out.relaxed.relaxed, true);
  let worst = 0;
  out.plain.logits.forEach((p, i) => (worst = Math.max(worst, Math.abs(p - out.relaxed.logits[i]) / (1 + Math.abs(p)))));
  assert.ok(worst < 1e-4, `resnet20 logits differ by ${worst} (relative)`);
  out.plain.losses.forEach((p, i) => assert.ok(Math.abs(p - out.relaxed.losses[i]) < 1e-3 * (1 + p), `step ${i}: loss ${p} vs ${out.relaxed.losses[i]}`));
  console.log(`relaxed SIMD vs SIMD128: resnet20 logits within ${worst.toExponential(2)}; resnet8 losses ${out.relaxed.losses.map((l) => l.toFixed(4))} vs ${out.plain.losses.map((l) => l.toFixed(4))}`);
  assert.deepEqual(problems, []);
});

test('an error goes away after a later success; the camera stops after a picture', async () => {
  const bad = join(work, 'bad.safetensors');
  writeFileSync(bad, Buffer.from('this is not a weight file, whatever its name says'));
  await page.setInputFiles('#weights-file', bad);
  await page.waitForSelector('#error:not([hidden])');
  assert.match(await page.textContent('#error'), /cannot load bad\.safetensors/);
  problems.length = 0; // the console warning of the error above is expected
  const img = join(work, 'good.png');
  writeFileSync(img, png(32, 32, (x, y) => [x * 8, y * 8, 128]));
  await page.evaluate(() => { window.resnetPage.lastPredictions = null; });
  await page.setInputFiles('#image-file', img);
  await page.waitForFunction(() => window.resnetPage.lastPredictions, null, { timeout: 30_000 });
  assert.equal(await page.isHidden('#error'), true, 'the stale error is gone');
  // camera (Chromium's fake device): on, a picture, off
  await page.click('#camera');
  await page.waitForFunction(() => window.resnetPage.cameraOn === true && document.getElementById('video').videoWidth > 0, null, { timeout: 30_000 });
  const track = await page.evaluateHandle(() => document.getElementById('video').srcObject.getVideoTracks()[0]);
  await page.evaluate(() => { window.resnetPage.lastPredictions = null; });
  await page.click('#snap');
  await page.waitForFunction(() => window.resnetPage.lastPredictions, null, { timeout: 30_000 });
  assert.equal(await track.evaluate((t) => t.readyState), 'ended', 'the camera is stopped');
  assert.equal(await page.evaluate(() => document.getElementById('video').srcObject), null);
  assert.equal(await page.isHidden('#snap'), true);
  // and when leaving the tab
  await page.click('#camera');
  await page.waitForFunction(() => window.resnetPage.cameraOn === true, null, { timeout: 30_000 });
  const track2 = await page.evaluateHandle(() => document.getElementById('video').srcObject.getVideoTracks()[0]);
  await page.click('#tab-train');
  assert.equal(await track2.evaluate((t) => t.readyState), 'ended', 'leaving the tab stops the camera');
  await page.click('#tab-classify');
  assert.deepEqual(problems, []);
});

test('classifying an image gives the native CLI top-1', async () => {
  // A model the engine can import: the real trained CIFAR checkpoint when the shared
  // folder is there, else the page's default model.
  const th = join(shared, 'pretrained', 'cifar10-akamaster', 'resnet20-12fca82f.th');
  const fallback = join(webRoot, 'models', 'resnet20-cifar10.safetensors');
  const weights = existsSync(th) ? th : fallback;
  if (!existsSync(weights)) {
    assert.ok(!process.env.CI, `CI needs ${th}`);
    return;
  }
  const img = join(work, 'test.png');
  writeFileSync(img, png(48, 40, (x, y) => [(x * 5) % 256, (y * 6) % 256, ((x + y) * 3) % 256]));
  await page.setInputFiles('#weights-file', weights);
  const name = weights.split('/').pop();
  await page.waitForFunction((n) => document.getElementById('model-info').textContent.startsWith(n), name, { timeout: 30_000 });
  await page.setInputFiles('#image-file', img);
  // Requests run in order in the engine's Worker: the 48x40 image's result comes last.
  await page.waitForFunction(() => /^48x40 image/.test(document.getElementById('timing').textContent), null, { timeout: 30_000 });
  const ours = await page.evaluate(() => window.resnetPage.lastPredictions);
  const cli = JSON.parse(execFileSync(resnetBin, ['classify', '--weights', weights, '--top', '5', '--json', img]).toString());
  const native = cli.results[0].predictions;
  assert.equal(ours[0].index, native[0].index);
  assert.equal(ours[0].label, native[0].label);
  assert.ok(Math.abs(ours[0].probability - native[0].probability) < 1e-4, `${ours[0].probability} vs ${native[0].probability}`);
  assert.equal(await page.locator('#bars li').count(), 5);
  await page.screenshot({ path: join(shots, 'classify.png'), fullPage: true });
  assert.deepEqual(problems, []);
});

test('training runs 50 steps on 2 workers from a downloaded archive with the loss falling', async () => {
  await page.click('#tab-train');
  await page.selectOption('#arch', 'resnet8');
  await page.fill('#data-url', `${site.url}data/cifar-10-binary.tar.gz`);
  const statuses = [];
  await page.exposeFunction('recordStatus', (t) => statuses.push(t));
  await page.evaluate(() => new MutationObserver(() => window.recordStatus(document.getElementById('train-status').textContent))
    .observe(document.getElementById('train-status'), { childList: true, characterData: true, subtree: true }));
  await page.fill('#batch', '16');
  await page.fill('#iters', '50');
  await page.fill('#workers', '2');
  await page.fill('#lr', '0.05');
  await page.fill('#eval-every', '25');
  await page.fill('#eval-limit', '50');
  assert.equal(await page.isDisabled('#pause'), true);
  await page.click('#start');
  await page.waitForFunction(() => window.resnetPage.trainState === 'running', null, { timeout: 60_000 });
  assert.equal(await page.isEnabled('#pause'), true);
  await page.waitForFunction(() => ['done', 'failed'].includes(window.resnetPage.trainState), null, { timeout: 240_000 });
  const state = await page.evaluate(() => ({
    state: window.resnetPage.trainState,
    iteration: window.resnetPage.iteration,
    loss: window.resnetPage.charts.loss.series.get('loss').points,
    counts: window.resnetPage.charts.error.counts(),
    rate: window.resnetPage.imagesPerSecond,
  }));
  assert.equal(state.state, 'done', await page.textContent('#error'));
  assert.equal(await page.evaluate(() => window.resnetPage.downloaded), cifar.length, 'the whole archive was downloaded');
  assert.ok(statuses.some((t) => /downloading [\d.]+ of [\d.]+ MB \(\d+ %\)/.test(t)), `download progress shown: ${statuses.slice(0, 5)}`);
  assert.match(await page.getAttribute('#loss-chart', 'aria-label'), /training loss\. loss: \d+ points, [\d.]+ at iteration 50/);
  assert.match(await page.getAttribute('#error-chart', 'aria-label'), /test: \d+ points/);
  assert.equal(state.iteration, 50);
  assert.ok(state.loss.length >= 4, JSON.stringify(state.loss));
  const first = state.loss[0][1];
  const last = state.loss[state.loss.length - 1][1];
  assert.ok(last < first, `loss went from ${first} to ${last}`);
  assert.ok(state.counts.test >= 2 && state.counts.train >= 4, JSON.stringify(state.counts));
  assert.match(await page.textContent('#train-status'), /finished 50 iterations/);
  assert.equal(await page.isEnabled('#download'), true);
  assert.equal(await page.isEnabled('#start'), true);
  console.log(`in-browser training: ${state.rate.toFixed(1)} images/s on 2 workers`);
  await page.screenshot({ path: join(shots, 'train.png'), fullPage: true });
  // The trained model moves to the Classify tab.
  await page.click('#use-model');
  await page.waitForFunction(() => /trained here/.test(document.getElementById('model-info').textContent), null, { timeout: 30_000 });
  assert.deepEqual(problems, []);
});

test('a run paused and resumed on 2 workers follows the same course as one straight run', async () => {
  await page.click('#tab-train');
  await page.selectOption('#arch', 'resnet8');
  await page.fill('#data-url', `${site.url}data/cifar-10-binary.tar.gz`);
  await page.fill('#batch', '16');
  await page.fill('#iters', '30');
  await page.fill('#workers', '2');
  await page.fill('#lr', '0.05');
  await page.fill('#eval-every', '20');
  await page.fill('#eval-limit', '50');
  const course = async (pauseAt) => {
    await page.click('#start');
    if (pauseAt) {
      await page.waitForFunction((n) => window.resnetPage.trainState === 'running' && window.resnetPage.iteration >= n, pauseAt, { timeout: 120_000 });
      await page.click('#pause');
      // The step in flight finishes; then the run holds still.
      await page.waitForTimeout(500);
      const held = await page.evaluate(() => window.resnetPage.iteration);
      await page.waitForTimeout(500);
      assert.equal(await page.evaluate(() => window.resnetPage.iteration), held, 'a paused run does not step');
      assert.ok(held < 30, `paused at ${held}`);
      await page.click('#resume');
    }
    await page.waitForFunction(() => ['done', 'failed'].includes(window.resnetPage.trainState), null, { timeout: 240_000 });
    assert.equal(await page.evaluate(() => window.resnetPage.trainState), 'done', await page.textContent('#error'));
    return page.evaluate(() => ({
      loss: window.resnetPage.charts.loss.series.get('loss').points,
      accuracy: window.resnetPage.lastTestAccuracy,
    }));
  };
  const straight = await course(0);
  const paused = await course(12);
  // A chart point every 10 steps: after steps 10, 20 and 30.
  assert.deepEqual(straight.loss.map(([it]) => it), [10, 20, 30], JSON.stringify(straight.loss));
  assert.deepEqual(paused, straight);
  assert.deepEqual(problems, []);
});

test('the page trains on the visitor\'s own images (a folder of class folders and the camera), then classifies with them', async () => {
  // red and blue pictures of assorted sizes, one folder per class, and a stray file at the top
  const root = join(work, 'my-pictures');
  const noise = (x, y, k) => ((x * 7 + y * 13 + k * 31) % 40);
  for (const [cls, colour] of [['red', [220, 30, 30]], ['blue', [30, 40, 220]]]) {
    mkdirSync(join(root, cls), { recursive: true });
    for (let k = 0; k < 12; k++) {
      writeFileSync(join(root, cls, `${k}.png`), png(30 + k, 24 + 2 * k, (x, y) => colour.map((c) => Math.min(255, c + noise(x, y, k)))));
    }
  }
  writeFileSync(join(root, 'stray.png'), png(8, 8, () => [0, 0, 0]));
  await page.click('#tab-train');
  await page.check('#source-own');
  assert.equal(await page.isVisible('#own-source'), true);
  assert.equal(await page.isHidden('#cifar-source'), true);
  await page.setInputFiles('#folder', root);
  await page.waitForFunction(() => window.resnetPage.ownClasses && window.resnetPage.ownClasses.blue === 12, null, { timeout: 30_000 });
  assert.deepEqual(await page.evaluate(() => window.resnetPage.ownClasses), { red: 12, blue: 12 });
  assert.match(await page.textContent('#train-status'), /24 images in 2 classes; 1 skipped/);
  // two pictures from the (fake) camera into a third class
  await page.click('#cam-start');
  await page.waitForFunction(() => document.getElementById('cam-video').videoWidth > 0, null, { timeout: 30_000 });
  await page.fill('#cam-class', 'camera');
  await page.click('#cam-add');
  await page.click('#cam-add');
  assert.deepEqual(await page.evaluate(() => window.resnetPage.ownClasses), { red: 12, blue: 12, camera: 2 });
  assert.match(await page.textContent('#own-classes'), /camera: 2 images/);
  // fine-tune the default model's classifier on one worker
  await page.selectOption('#start-from', 'head');
  await page.fill('#batch', '8');
  await page.fill('#iters', '60');
  await page.fill('#workers', '1');
  await page.fill('#lr', '0.05');
  await page.fill('#eval-every', '20');
  await page.selectOption('#schedule', 'constant');
  await page.click('#start');
  await page.waitForFunction(() => ['done', 'failed'].includes(window.resnetPage.trainState) && window.resnetPage.iteration === 60, null, { timeout: 240_000 })
    .catch(() => {});
  assert.equal(await page.evaluate(() => window.resnetPage.trainState), 'done', await page.textContent('#error'));
  assert.match(await page.textContent('#train-status'), /finished 60 iterations/);
  const acc = await page.evaluate(() => window.resnetPage.lastTestAccuracy);
  assert.ok(acc >= 0.8, `held-out accuracy ${acc}`);
  await page.screenshot({ path: join(shots, 'train-own-images.png'), fullPage: true });
  // the download is a model file the native CLI reads, with the visitor's classes
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#download')]);
  assert.match(download.suggestedFilename(), /^resnet20-own-images-60\.safetensors$/);
  const saved = join(work, download.suggestedFilename());
  await download.saveAs(saved);
  const info = JSON.parse(execFileSync(resnetBin, ['classify', '--weights', saved, '--top', '3', '--json', join(root, 'red', '3.png')]).toString());
  assert.deepEqual(info.results[0].predictions.map((p) => p.label).sort(), ['blue', 'camera', 'red']);
  // the fine-tuned model classifies a new red picture as red
  await page.click('#use-model');
  await page.waitForFunction(() => /trained here \(60 iterations\)/.test(document.getElementById('model-info').textContent), null, { timeout: 30_000 });
  assert.deepEqual((await page.evaluate(() => window.resnetPage.modelInfo.classes)).sort(), ['blue', 'camera', 'red']);
  await page.waitForFunction(() => document.getElementById('tab-classify').getAttribute('aria-selected') === 'true');
  assert.equal(await page.evaluate(() => document.getElementById('cam-video').srcObject), null, 'leaving the tab stopped the camera');
  const red = join(work, 'new-red.png');
  // a picture of the same kind as the red folder's, not among them
  writeFileSync(red, png(50, 50, (x, y) => [220, 30, 30].map((c) => Math.min(255, c + noise(x, y, 12)))));
  await page.setInputFiles('#image-file', red);
  await page.waitForFunction(() => /^50x50 image/.test(document.getElementById('timing').textContent), null, { timeout: 30_000 });
  const top = await page.evaluate(() => window.resnetPage.lastPredictions);
  assert.equal(top[0].label, 'red', JSON.stringify(top));
  assert.equal(await page.locator('#bars li').count(), 3, 'three classes, three bars');
  await page.screenshot({ path: join(shots, 'classify-own-model.png'), fullPage: true });
  assert.deepEqual(problems, []);
});
