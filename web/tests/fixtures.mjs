// Test inputs made by the tests themselves: PNG images, a CIFAR-10 binary tarball, and a
// static file server on 127.0.0.1.
import { createServer } from 'node:http';
import { readFile } from 'node:fs/promises';
import { extname, join, normalize } from 'node:path';
import { gzipSync, deflateSync } from 'node:zlib';

const crcTable = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function crc32(buf) {
  let c = 0xffffffff;
  for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** An RGB PNG of `width` x `height` from a pixel function `(x, y) => [r, g, b]`. */
export function png(width, height, pixel) {
  const raw = Buffer.alloc((width * 3 + 1) * height);
  for (let y = 0; y < height; y++) {
    raw[y * (width * 3 + 1)] = 0;
    for (let x = 0; x < width; x++) raw.set(pixel(x, y), y * (width * 3 + 1) + 1 + x * 3);
  }
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const td = Buffer.concat([Buffer.from(type), data]);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(td));
    return Buffer.concat([len, td, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr[8] = 8; ihdr[9] = 2; ihdr[10] = 0; ihdr[11] = 0; ihdr[12] = 0;
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr), chunk('IDAT', deflateSync(raw)), chunk('IEND', Buffer.alloc(0)),
  ]);
}

/** A CIFAR-10 batch of `n` learnable images: each class has its own colour. */
export function cifarBatch(n, salt) {
  const out = Buffer.alloc(n * 3073);
  for (let i = 0; i < n; i++) {
    const label = i % 10;
    out[i * 3073] = label;
    for (let c = 0; c < 3; c++) {
      for (let p = 0; p < 1024; p++) {
        out[i * 3073 + 1 + c * 1024 + p] = (label * 25 + c * 60 + ((p * 7 + i * 13 + salt) % 41)) % 256;
      }
    }
  }
  return out;
}

function tarEntry(name, data) {
  const h = Buffer.alloc(512);
  h.write(name, 0);
  h.write('0000644\0', 100);
  h.write('0000000\0', 108);
  h.write('0000000\0', 116);
  h.write(data.length.toString(8).padStart(11, '0') + '\0', 124);
  h.write('00000000000\0', 136);
  h.write('        ', 148);
  h[156] = '0'.charCodeAt(0);
  h.write('ustar\0', 257);
  h.write('00', 263);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148);
  const pad = Buffer.alloc((512 - (data.length % 512)) % 512);
  return Buffer.concat([h, data, pad]);
}

/** The layout of the official `cifar-10-binary.tar.gz`, with `perBatch` images per batch. */
export function cifarTarGz(perBatch, testImages) {
  const parts = [];
  for (let k = 1; k <= 5; k++) parts.push(tarEntry(`cifar-10-batches-bin/data_batch_${k}.bin`, cifarBatch(perBatch, k)));
  parts.push(tarEntry('cifar-10-batches-bin/test_batch.bin', cifarBatch(testImages, 99)));
  parts.push(Buffer.alloc(1024));
  return gzipSync(Buffer.concat(parts));
}

const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript', '.css': 'text/css',
  '.wasm': 'application/wasm', '.json': 'application/json', '.safetensors': 'application/octet-stream' };

/** Serves `root` on 127.0.0.1, and the buffers of `extra` (`{ '/path': Buffer }`) at their
 * paths, with their length. No COOP/COEP headers (the page must not need them) unless
 * `isolated`, which makes the page cross-origin isolated, as `cargo xtask web --isolated`. */
export async function serve(root, extra = {}, { isolated = false } = {}) {
  const server = createServer(async (req, res) => {
    if (isolated) {
      res.setHeader('cross-origin-opener-policy', 'same-origin');
      res.setHeader('cross-origin-embedder-policy', 'require-corp');
    }
    const url = new URL(req.url, 'http://x').pathname;
    if (extra[url]) {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': extra[url].length });
      res.end(extra[url]);
      return;
    }
    const path = normalize(decodeURIComponent(url)).replace(/^(\.\.[/\\])+/, '');
    const file = join(root, path.endsWith('/') ? path + 'index.html' : path);
    try {
      const body = await readFile(file);
      res.writeHead(200, { 'content-type': TYPES[extname(file)] || 'application/octet-stream' });
      res.end(body);
    } catch {
      res.writeHead(404);
      res.end('not found');
    }
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return { server, url: `http://127.0.0.1:${server.address().port}/` };
}
