// The web page in real Chromium (playwright-core driving Debian's /usr/bin/chromium):
// loads without console errors, classifies like the native CLI, trains on 2 workers.
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

before(async () => {
  assert.ok(existsSync(join(webRoot, 'pkg', 'index.js')), 'web/pkg is missing: run `cargo xtask web` (or `cargo xtask test`)');
  mkdirSync(shots, { recursive: true });
  site = await serve(webRoot);
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
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
  await page.waitForFunction(() => window.resnetPage.modelInfo, null, { timeout: 30_000 });
  await page.setInputFiles('#image-file', img);
  await page.waitForFunction(() => window.resnetPage.lastPredictions, null, { timeout: 30_000 });
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

test('training runs 50 steps on 2 workers with the loss falling', async () => {
  const data = join(work, 'cifar-10-binary.tar.gz');
  writeFileSync(data, cifarTarGz(40, 50));
  await page.click('#tab-train');
  await page.selectOption('#arch', 'resnet8');
  await page.setInputFiles('#data-file', data);
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
