#!/usr/bin/env node
// Data-parallel training throughput of the real page (web/) in headless Chromium, with 1
// and 2 Web Workers (or the counts given), and screenshots of its two tabs.
//
// usage: node scripts/web_train_bench.mjs [--model resnet20] [--batch 32] [--steps 60]
//          [--warmup 10] [--workers 1,2] [--data cifar-10-binary.tar.gz] [--image PICTURE]
//          [--shots DIR] [--chromium /usr/bin/chromium] [--timeout 900]
//   --model    an entry of the page's Model list (resnet8, resnet14, resnet20, ...)
//   --batch    the page's batch, split over the workers (16 + 16 with 2 workers)
//   --steps    iterations timed after --warmup untimed ones (timing: from the status
//              line, which the page updates once per iteration)
//   --data     a CIFAR-10 binary tarball; default: a small synthetic one in the official
//              layout (5 x 200 training images, 100 test images), as web/tests makes
//   --image    picture for the Classify screenshot; default: a CIFAR-10 test JPEG from
//              $RESNET_SHARED when there, else a generated PNG
//   --shots    screenshot folder (default target/web-screenshots in the repo)
// Needs web/pkg (cargo xtask wasm) and playwright-core in web/tests/node_modules (cargo
// xtask test installs it) or on PLAYWRIGHT_CORE (a path to the package folder).
// Prints one JSON line per worker count. The page evaluates only at the end of its run,
// which this never reaches (it stops the run itself), so no evaluation is timed.
import { createRequire } from 'node:module';
import { existsSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const web = join(repo, 'web');
const { png, cifarTarGz, serve } = await import(join(web, 'tests', 'fixtures.mjs'));
const requireFrom = createRequire(join(web, 'tests', 'package.json'));
const { chromium } = requireFrom(process.env.PLAYWRIGHT_CORE || 'playwright-core');

const opt = { model: 'resnet20', batch: 32, steps: 60, warmup: 10, workers: '1,2', data: null, image: null,
  shots: join(repo, 'target', 'web-screenshots'), chromium: process.env.CHROMIUM || '/usr/bin/chromium', timeout: 900 };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const key = argv[i].replace(/^--/, '');
  if (!(key in opt) || argv[i + 1] === undefined) {
    console.error(`unknown or incomplete option ${argv[i]}; see the head of ${fileURLToPath(import.meta.url)}`);
    process.exit(2);
  }
  opt[key] = typeof opt[key] === 'number' ? Number(argv[++i]) : argv[++i];
}
const workerCounts = String(opt.workers).split(',').map(Number);
if (!existsSync(join(web, 'pkg', 'index.js'))) throw new Error('web/pkg is missing: run `cargo xtask wasm`');

const work = mkdtempSync(join(tmpdir(), 'resnet-webtrain-'));
let data = opt.data && resolve(opt.data);
if (!data) {
  data = join(work, 'cifar-10-binary.tar.gz');
  writeFileSync(data, cifarTarGz(200, 100));
}
let image = opt.image && resolve(opt.image);
if (!image) {
  const shared = process.env.RESNET_SHARED || join(repo, '..', 'shared');
  image = join(shared, 'data', 'cifar10-jpeg', 'test', 'cat', '0001.jpg');
  if (!existsSync(image)) {
    image = join(work, 'picture.png');
    writeFileSync(image, png(64, 64, (x, y) => [(x * 4) % 256, (y * 4) % 256, ((x + y) * 2) % 256]));
  }
}
mkdirSync(opt.shots, { recursive: true });

const site = await serve(web);
const browser = await chromium.launch({
  executablePath: opt.chromium,
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
const ms = opt.timeout * 1000;

async function openPage() {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
  const problems = [];
  page.on('console', (m) => m.type() === 'error' && problems.push(`console: ${m.text()}`));
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  await page.goto(site.url, { waitUntil: 'commit' });
  await page.waitForFunction(() => window.resnetPage && window.resnetPage.ready, null, { timeout: ms });
  return { page, problems };
}

async function pageError(page) {
  return (await page.isHidden('#error')) ? null : await page.textContent('#error');
}

function stats(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const q = (f) => s[Math.min(s.length - 1, Math.max(0, Math.round(f * (s.length - 1))))];
  const r = (v) => +v.toFixed(2);
  return { n: s.length, median: r(q(0.5)), min: r(s[0]), max: r(s[s.length - 1]), p25: r(q(0.25)), p75: r(q(0.75)) };
}

let failed = 0;
try {
  // Classify tab: the page's default model on one picture.
  {
    const { page, problems } = await openPage();
    await page.setInputFiles('#image-file', image);
    await page.waitForFunction(() => window.resnetPage.lastPredictions || !document.getElementById('error').hidden, null, { timeout: ms });
    await page.screenshot({ path: join(opt.shots, 'bench-classify.png'), fullPage: true });
    const top = await page.evaluate(() => window.resnetPage.lastPredictions);
    const err = await pageError(page);
    if (err || problems.length) console.error(`classify: ${err || ''} ${problems.join('; ')}`);
    console.error(`classify ${image}: ${top ? `${top[0].label} ${(100 * top[0].probability).toFixed(1)} %` : 'no result'}`);
    await page.close();
  }

  for (const workers of workerCounts) {
    const { page, problems } = await openPage();
    // Record when each iteration shows up in the status line ("iteration K/N, ...").
    await page.evaluate(() => {
      window.__steps = [];
      const status = document.getElementById('train-status');
      new MutationObserver(() => {
        const m = /^iteration (\d+)\//.exec(status.textContent);
        if (m) window.__steps.push([Number(m[1]), performance.now()]);
      }).observe(status, { childList: true, characterData: true, subtree: true });
    });
    await page.click('#tab-train');
    await page.selectOption('#arch', opt.model);
    await page.setInputFiles('#data-file', data);
    await page.fill('#batch', String(opt.batch));
    await page.fill('#iters', '1000000'); // never reached: no final evaluation, constant lr here
    await page.fill('#eval-every', '1000000');
    await page.fill('#eval-limit', '1');
    await page.fill('#workers', String(workers));
    await page.click('#start');
    const last = opt.warmup + opt.steps;
    await page.waitForFunction((n) => window.__steps.length && window.__steps[window.__steps.length - 1][0] >= n
      || ['failed', 'done'].includes(window.resnetPage.trainState), last, { timeout: ms, polling: 200 });
    await page.screenshot({ path: join(opt.shots, `bench-train-w${workers}.png`), fullPage: true });
    const seen = await page.evaluate(() => ({ steps: window.__steps, rate: window.resnetPage.imagesPerSecond,
      state: window.resnetPage.trainState, status: document.getElementById('train-status').textContent }));
    await page.click('#stop').catch(() => {});
    const err = await pageError(page);
    const at = new Map(seen.steps.map(([it, t]) => [it, t]));
    const result = { page: 'web/index.html', model: opt.model, batch: opt.batch, workers, warmup: opt.warmup, steps: opt.steps,
      data: opt.data ? data : 'synthetic 1000+100', browser: browser.version() };
    if (err || seen.state === 'failed' || !at.has(opt.warmup) || !at.has(last)) {
      failed++;
      console.log(JSON.stringify({ ...result, error: err || `no iteration ${last} (state ${seen.state})`, problems }));
    } else {
      // Per-iteration times between consecutive status updates after the warm-up.
      const dt = [];
      for (let it = opt.warmup + 1; it <= last; it++) if (at.has(it) && at.has(it - 1)) dt.push(at.get(it) - at.get(it - 1));
      const secs = (at.get(last) - at.get(opt.warmup)) / 1000;
      const hw = await page.evaluate(() => navigator.hardwareConcurrency);
      console.log(JSON.stringify({ ...result, images_per_s: +((opt.steps * opt.batch) / secs).toFixed(2),
        ms_per_step: stats(dt), page_images_per_s: +seen.rate.toFixed(2), page_status: seen.status,
        hardwareConcurrency: hw, problems }));
    }
    await page.close();
  }
} finally {
  await browser.close();
  site.server.close();
}
console.error(`screenshots in ${opt.shots}`);
process.exit(failed ? 1 : 0);
