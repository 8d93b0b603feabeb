#!/usr/bin/env node
// Does this Chromium fuse WebAssembly's f32x4.relaxed_madd? Times a dependent chain of
// 50 million `acc = acc * x + x` steps as one relaxed_madd and as f32x4.mul + f32x4.add
// (two hand-assembled modules), three rounds each, and prints ns per step and the final
// value: a fused chain is shorter in latency and rounds once (its value differs).
//   node scripts/relaxed_fma_probe.mjs   (playwright-core from web/tests, CHROMIUM)
import { createRequire } from 'node:module';
const require = createRequire(new URL('../web/tests/package.json', import.meta.url));
const { chromium } = require('playwright-core');
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: ['--no-sandbox'] });
const page = await browser.newPage();
const out = await page.evaluate(() => {
  const f32 = (v) => [...new Uint8Array(new Float32Array([v, v, v, v]).buffer)];
  const leb = (n) => { const o = []; do { let b = n & 0x7f; n >>>= 7; if (n) b |= 0x80; o.push(b); } while (n); return o; };
  function module(op) {
    const body = [1, 2, 0x7b, // 2 v128 locals
      0xfd, 0x0c, ...f32(1.0), 0x21, 1, 0xfd, 0x0c, ...f32(0.999), 0x21, 2,
      0x03, 0x40, ...op, 0x21, 1, 0x20, 0, 0x41, 1, 0x6b, 0x22, 0, 0x0d, 0, 0x0b,
      0x20, 1, 0xfd, 0x1f, 0, 0x0b];
    const code = [1, ...leb(body.length), ...body];
    const bytes = [0, 0x61, 0x73, 0x6d, 1, 0, 0, 0,
      1, 6, 1, 0x60, 1, 0x7f, 1, 0x7d,
      3, 2, 1, 0,
      7, 5, 1, 1, 0x66, 0, 0,
      10, ...leb(code.length), ...code];
    return new WebAssembly.Instance(new WebAssembly.Module(new Uint8Array(bytes))).exports.f;
  }
  const relaxed = module([0x20, 1, 0x20, 2, 0x20, 2, 0xfd, 0x85, 0x02]);
  const plain = module([0x20, 1, 0x20, 2, 0xfd, 0xe6, 0x01, 0x20, 2, 0xfd, 0xe4, 0x01]);
  const n = 50_000_000;
  const res = {};
  for (let r = 0; r < 3; r++) for (const [k, f] of [['relaxed', relaxed], ['mul+add', plain]]) {
    const t = performance.now(); const v = f(n); const ms = performance.now() - t;
    (res[k] ??= []).push(`${(ms * 1e6 / n).toFixed(3)} ns/iter (${v})`);
  }
  return res;
});
console.log(JSON.stringify(out, null, 1));
await browser.close();
