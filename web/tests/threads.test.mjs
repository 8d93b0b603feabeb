// The threaded build in real Chromium: on a cross-origin-isolated server (COOP/COEP) the
// page's engine runs the threaded build with a pool of Web Workers and computes what the
// single-thread build computes; without isolation it runs one thread.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { resolve, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { serve } from './fixtures.mjs';

const webRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..');

let browser, isolated, plain;
const problems = [];

async function open(site) {
  const page = await browser.newPage();
  page.on('console', (m) => m.type() === 'error' && problems.push(`console: ${m.text()}`));
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('response', (r) => r.status() >= 400 && problems.push(`HTTP ${r.status()} for ${r.url()}`));
  await page.goto(site.url, { waitUntil: 'commit' });
  await page.waitForFunction(() => window.resnetPage && window.resnetPage.ready, null, { timeout: 60_000 });
  return page;
}

before(async () => {
  assert.ok(existsSync(join(webRoot, 'pkg', 'threads', 'resnet_wasm_bg.wasm')), 'web/pkg has no threaded build: run `cargo xtask web` (or `cargo xtask test`)');
  isolated = await serve(webRoot, {}, { isolated: true });
  plain = await serve(webRoot);
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  await browser?.close();
  isolated?.server.close();
  plain?.server.close();
});

test('a cross-origin-isolated page runs the threaded build on navigator.hardwareConcurrency threads; a plain page on one', async () => {
  const page = await open(isolated);
  const seen = await page.evaluate(() => ({
    isolated: self.crossOriginIsolated,
    cores: navigator.hardwareConcurrency,
    threads: window.resnetPage.engine.threads,
    shown: document.getElementById('engine-info').textContent,
  }));
  assert.equal(seen.isolated, true);
  assert.equal(seen.threads, Math.min(8, seen.cores), JSON.stringify(seen));
  if (seen.threads > 1) assert.equal(seen.shown, ` (SIMD128, ${seen.threads} threads)`, 'the page says which build runs');
  await page.close();
  const single = await open(plain);
  assert.equal(await single.evaluate(() => [self.crossOriginIsolated, window.resnetPage.engine.threads].join()), 'false,1');
  assert.equal(await single.evaluate(() => document.getElementById('engine-info').textContent), ' (relaxed SIMD, one thread)');
  await single.close();
  assert.deepEqual(problems, []);
});

test('two threads compute what one thread computes: resnet20 logits, resnet8 training losses', async () => {
  const page = await open(isolated);
  const out = await page.evaluate(async () => {
    const { probe } = await import('./tests/engine-probe.mjs');
    // A module instance (and engine Worker) of its own for each build.
    const run = async (threads, tag) => probe(await import(`./pkg/async.js?${tag}`), {
      threads,
      ...(threads === 1 ? { wasm: new URL('pkg/resnet_wasm_bg.wasm', location.href).href } : {}),
    }, { images: 8 });
    return { one: await run(1, 'one'), two: await run(2, 'two') };
  });
  assert.equal(out.one.threads, 1);
  assert.equal(out.two.threads, 2);
  assert.equal(out.two.relaxed, false, 'the threaded build is SIMD128');
  assert.equal(out.one.logits.length, 80);
  let worst = 0;
  out.one.logits.forEach((p, i) => (worst = Math.max(worst, Math.abs(p - out.two.logits[i]) / (1 + Math.abs(p)))));
  assert.ok(worst < 1e-5, `resnet20 logits differ by ${worst} (relative)`);
  assert.deepEqual(out.two.top.map((p) => p.index), out.one.top.map((p) => p.index));
  out.one.losses.forEach((p, i) => assert.ok(Math.abs(p - out.two.losses[i]) < 1e-4 * (1 + p), `step ${i}: loss ${p} vs ${out.two.losses[i]}`));
  assert.ok(out.two.losses.every(Number.isFinite));
  console.log(`threaded build: resnet20 logits within ${worst.toExponential(2)} of one thread; resnet8 losses ${out.two.losses.map((l) => l.toFixed(4))}`);
  await page.close();
  assert.deepEqual(problems, []);
});
