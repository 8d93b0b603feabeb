// Test helpers: installing the packed package in a fresh project, the native CLI, and
// writing PNG, CIFAR batch and tar.gz files without any dependency.

import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { deflateSync, gzipSync } from 'node:zlib';

export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

/** The tarball `cargo xtask wasm` packed (RESNET_WASM_TARBALL, else the default target dir). */
export function findTarball() {
  const env = process.env.RESNET_WASM_TARBALL;
  if (env) {
    if (!existsSync(env)) throw new Error(`RESNET_WASM_TARBALL=${env} does not exist`);
    return env;
  }
  const dir = join(process.env.CARGO_TARGET_DIR ? resolve(repoRoot, process.env.CARGO_TARGET_DIR) : join(repoRoot, 'target'), 'wasm-pkg');
  const found = existsSync(dir) ? readdirSync(dir).filter((f) => /^resnet-wasm-.*\.tgz$/.test(f)) : [];
  if (found.length !== 1) throw new Error(`no single resnet-wasm-*.tgz in ${dir}: run \`cargo xtask wasm\` first (or set RESNET_WASM_TARBALL)`);
  return join(dir, found[0]);
}

/** Installs `tarball` into a new temporary npm project; returns its folder. */
export function installInFreshProject(tarball) {
  const dir = mkdtempSync(join(tmpdir(), 'resnet-wasm-test-'));
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'probe', private: true, type: 'module' }));
  execFileSync('npm', ['install', '--offline', '--no-audit', '--no-fund', '--ignore-scripts', tarball], { cwd: dir, stdio: 'pipe' });
  // A module inside the project, so that 'resnet-wasm' resolves as any user's import would.
  writeFileSync(join(dir, 'probe.mjs'), "export * from 'resnet-wasm';\nexport { default } from 'resnet-wasm';\n");
  return dir;
}

/** Imports the package as a module of the project in `dir` (Node conditions). */
export async function importPackage(dir) {
  return import(pathToFileURL(join(dir, 'probe.mjs')).href);
}

/** Runs the native CLI (RESNET_BIN, else `cargo run --release`) and parses its JSON output. */
export function nativeJson(args) {
  const bin = process.env.RESNET_BIN;
  const out = bin
    ? execFileSync(bin, args, { cwd: repoRoot, maxBuffer: 1 << 28 })
    : execFileSync('cargo', ['run', '--release', '--quiet', '-p', 'resnet', '--bin', 'resnet', '--', ...args], { cwd: repoRoot, maxBuffer: 1 << 28 });
  return JSON.parse(out.toString());
}

/** `$RESNET_SHARED` (default ../shared beside the repository). */
export function sharedDir() {
  return process.env.RESNET_SHARED ? resolve(repoRoot, process.env.RESNET_SHARED) : resolve(repoRoot, '../shared');
}

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(buf) {
  let c = 0xffffffff;
  for (const b of buf) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(type, data) {
  const out = Buffer.alloc(12 + data.length);
  out.writeUInt32BE(data.length, 0);
  out.write(type, 4, 'ascii');
  Buffer.from(data).copy(out, 8);
  out.writeUInt32BE(crc32(out.subarray(4, 8 + data.length)), 8 + data.length);
  return out;
}

/** An 8-bit RGB PNG of interleaved `rgb` pixels. */
export function encodePng(width, height, rgb) {
  const raw = Buffer.alloc((width * 3 + 1) * height);
  for (let y = 0; y < height; y++) {
    raw[y * (width * 3 + 1)] = 0;
    Buffer.from(rgb.subarray(y * width * 3, (y + 1) * width * 3)).copy(raw, y * (width * 3 + 1) + 1);
  }
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr.set([8, 2, 0, 0, 0], 8);
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(raw)),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

/** Deterministic pseudo-random bytes. */
export function noise(n, seed) {
  const out = new Uint8Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    out[i] = s & 0xff;
  }
  return out;
}

/** A CIFAR-10 binary batch: per record one label byte then 3072 bytes of CHW pixels. */
export function cifarBatch(labels, seed) {
  const rec = 1 + 3072;
  const out = Buffer.alloc(rec * labels.length);
  labels.forEach((l, i) => {
    out[i * rec] = l;
    out.set(noise(3072, seed + i), i * rec + 1);
  });
  return out;
}

/** A gzipped ustar archive of `{ name: bytes }`. */
export function tarGz(files) {
  const parts = [];
  for (const [name, data] of Object.entries(files)) {
    const h = Buffer.alloc(512);
    h.write(name, 0, 100, 'utf8');
    h.write('0000644\0', 100);
    h.write('0000000\0', 108);
    h.write('0000000\0', 116);
    h.write(data.length.toString(8).padStart(11, '0') + '\0', 124);
    h.write('00000000000\0', 136);
    h.write('        ', 148);
    h.write('0', 156);
    h.write('ustar\0', 257);
    h.write('00', 263);
    let sum = 0;
    for (const b of h) sum += b;
    h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148);
    parts.push(h, data, Buffer.alloc((512 - (data.length % 512)) % 512));
  }
  parts.push(Buffer.alloc(1024));
  return gzipSync(Buffer.concat(parts));
}
