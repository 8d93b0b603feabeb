#!/usr/bin/env node
// Compact table of bench.cjs results (JSON lines), as written by scripts/webbench.sh.
// usage: node scripts/webbench_table.mjs results.jsonl [more.jsonl ...]
import { readFileSync } from 'node:fs';

const rows = [['page', 'system', 'mode', 'model', 'batch', 'thr', 'median ms', 'IQR ms', 'img/s', 'n']];
const errors = [];
const builds = {}; // "mode model bN" -> { simd128: [median ms...], relaxed: [...] }
for (const file of process.argv.slice(2)) {
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    if (!line.trim()) continue;
    const r = JSON.parse(line);
    const coi = r.job.startsWith('coi:');
    const page = r.job.replace(/^coi:/, '').replace(/^resnet\/bench\//, '').replace(/\?.*/, '') + (coi ? ' (coi)' : '');
    if (r.error) {
      errors.push(`ERROR ${r.job}: ${r.error.split('\n')[0].slice(0, 200)}`);
      continue;
    }
    const m = r.ms_per_run;
    if (r.build) {
      const key = `${r.mode || 'infer'} ${r.model} b${r.batch}`;
      builds[key] ??= {};
      (builds[key][r.build] ??= []).push(m.median);
    }
    const backend = r.backend && !r.system.includes(r.backend) ? ` ${r.backend}` : '';
    const thr = r.numThreads_effective ?? r.wasm_threads_count ?? r.threads ?? 1;
    rows.push([
      page, r.system + backend + (r.build ? ` [${r.build}]` : ''), r.mode || 'infer', r.model, String(r.batch),
      String(thr), m.median.toFixed(2), `${m.p25.toFixed(2)}-${m.p75.toFixed(2)}`,
      ((1000 * r.batch) / m.median).toFixed(1), String(m.n),
    ]);
  }
}
const width = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
for (const [i, r] of rows.entries()) {
  console.log(r.map((v, c) => (c >= 4 ? v.padStart(width[c]) : v.padEnd(width[c]))).join('  ').trimEnd());
  if (i === 0) console.log(width.map((w) => '-'.repeat(w)).join('  '));
}
for (const e of errors) console.log(e);
// Builds measured side by side (webbench.sh relaxed): the median of each build's medians
// and the speed-up of the relaxed-SIMD build over the SIMD128 one.
const median = (a) => [...a].sort((x, y) => x - y)[Math.floor((a.length - 1) / 2)];
for (const [key, b] of Object.entries(builds)) {
  if (!b.simd128 || !b.relaxed) continue;
  const [p, q] = [median(b.simd128), median(b.relaxed)];
  console.log(`${key}: simd128 ${p.toFixed(2)} ms (${b.simd128.map((x) => x.toFixed(2)).join(', ')}), relaxed ${q.toFixed(2)} ms (${b.relaxed.map((x) => x.toFixed(2)).join(', ')}): relaxed ${(p / q).toFixed(3)}x`);
}
