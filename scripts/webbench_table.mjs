#!/usr/bin/env node
// Compact table of bench.cjs results (JSON lines), as written by scripts/webbench.sh.
// usage: node scripts/webbench_table.mjs results.jsonl [more.jsonl ...]
import { readFileSync } from 'node:fs';

const rows = [['page', 'system', 'mode', 'model', 'batch', 'thr', 'median ms', 'IQR ms', 'img/s', 'n']];
const errors = [];
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
    const backend = r.backend && !r.system.includes(r.backend) ? ` ${r.backend}` : '';
    const thr = r.numThreads_effective ?? r.wasm_threads_count ?? r.threads ?? 1;
    rows.push([
      page, r.system + backend, r.mode || 'infer', r.model, String(r.batch),
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
