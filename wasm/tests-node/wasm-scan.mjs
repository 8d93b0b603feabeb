// A small WebAssembly code-section decoder: walks every instruction of every function
// body (so immediates are never mistaken for opcodes) and counts the SIMD (0xFD) ones.

function reader(bytes, pos, end) {
  const r = {
    pos,
    end,
    byte() {
      if (r.pos >= r.end) throw new Error(`truncated at byte ${r.pos}`);
      return bytes[r.pos++];
    },
    uleb() {
      let result = 0;
      let shift = 0;
      for (;;) {
        const b = r.byte();
        result += (b & 0x7f) * 2 ** shift;
        shift += 7;
        if ((b & 0x80) === 0) return result;
        if (shift > 63) throw new Error(`LEB128 too long at byte ${r.pos}`);
      }
    },
    sleb() {
      // value not needed: skip the bytes
      for (;;) {
        if ((r.byte() & 0x80) === 0) return;
      }
    },
    skip(n) {
      if (r.pos + n > r.end) throw new Error(`truncated at byte ${r.pos}`);
      r.pos += n;
    },
    memarg() {
      r.uleb();
      r.uleb();
    },
  };
  return r;
}

const VALTYPES = new Set([0x7f, 0x7e, 0x7d, 0x7c, 0x7b, 0x70, 0x6f]);

function simdImmediates(r, op) {
  if (op <= 0x0b || op === 0x5c || op === 0x5d) r.memarg(); // loads, splats, store, load_zero
  else if (op === 0x0c || op === 0x0d) r.skip(16); // v128.const, i8x16.shuffle
  else if (op >= 0x15 && op <= 0x22) r.skip(1); // extract/replace lane
  else if (op >= 0x54 && op <= 0x5b) {
    r.memarg(); // load/store lane
    r.skip(1);
  }
}

function instruction(r, counts) {
  const op = r.byte();
  if (op === 0x02 || op === 0x03 || op === 0x04) {
    const t = r.byte(); // block type: empty, a value type, or a type index (s33)
    if (t !== 0x40 && !VALTYPES.has(t)) {
      r.pos -= 1;
      r.sleb();
    }
    return undefined;
  }
  if (op === 0x0c || op === 0x0d || op === 0x10 || op === 0x12 || (op >= 0x20 && op <= 0x26) || op === 0xd2) return r.uleb();
  if (op === 0x0e) {
    const n = r.uleb();
    for (let i = 0; i <= n; i++) r.uleb();
    return undefined;
  }
  if (op === 0x11 || op === 0x13) {
    r.uleb();
    return r.uleb();
  }
  if (op === 0x1c) {
    const n = r.uleb();
    return r.skip(n);
  }
  if (op >= 0x28 && op <= 0x3e) return r.memarg();
  if (op === 0x3f || op === 0x40 || op === 0xd0) return r.skip(1);
  if (op === 0x41 || op === 0x42) return r.sleb();
  if (op === 0x43) return r.skip(4);
  if (op === 0x44) return r.skip(8);
  if (op === 0xfc) {
    const sub = r.uleb();
    if (sub <= 7) return undefined;
    if (sub === 8) {
      r.uleb();
      return r.skip(1);
    }
    if (sub === 10) return r.skip(2);
    if (sub === 11) return r.skip(1);
    if (sub === 12 || sub === 14) {
      r.uleb();
      return r.uleb();
    }
    if (sub === 9 || sub === 13 || (sub >= 15 && sub <= 17)) return r.uleb();
    throw new Error(`unknown 0xFC ${sub} at byte ${r.pos}`);
  }
  if (op === 0xfe) {
    // Threads: atomic.fence has one zero byte; every other atomic instruction a memarg.
    const sub = r.uleb();
    return sub === 0x03 ? r.skip(1) : r.memarg();
  }
  if (op === 0xfd) {
    const sub = r.uleb();
    counts.set(sub, (counts.get(sub) ?? 0) + 1);
    return simdImmediates(r, sub);
  }
  const plain = op <= 0x01 || op === 0x05 || op === 0x0b || op === 0x0f || op === 0x1a || op === 0x1b || (op >= 0x45 && op <= 0xc4) || op === 0xd1;
  if (!plain) throw new Error(`unknown opcode 0x${op.toString(16)} at byte ${r.pos - 1}`);
  return undefined;
}

/** Decodes `bytes` (a .wasm file) and returns `{ functions, instructions, simd, bySimdOp }`
 * where `bySimdOp` maps each 0xFD sub-opcode to its count. Throws on anything it cannot decode. */
export function scanWasm(bytes) {
  if (bytes[0] !== 0 || bytes[1] !== 0x61 || bytes[2] !== 0x73 || bytes[3] !== 0x6d) throw new Error('not a wasm module');
  const top = reader(bytes, 8, bytes.length);
  const counts = new Map();
  let functions = 0;
  let instructions = 0;
  while (top.pos < top.end) {
    const id = top.byte();
    const size = top.uleb();
    const start = top.pos;
    if (id === 10) {
      const s = reader(bytes, start, start + size);
      const n = s.uleb();
      for (let f = 0; f < n; f++) {
        const len = s.uleb();
        const body = reader(bytes, s.pos, s.pos + len);
        const groups = body.uleb();
        for (let g = 0; g < groups; g++) {
          body.uleb();
          body.byte();
        }
        while (body.pos < body.end) {
          instruction(body, counts);
          instructions++;
        }
        s.pos += len;
        functions++;
      }
    }
    top.pos = start + size;
  }
  let simd = 0;
  for (const c of counts.values()) simd += c;
  return { functions, instructions, simd, bySimdOp: counts };
}

/** Sub-opcodes of a few SIMD instructions the engine's kernels use. */
export const SIMD_OPS = { 'v128.load': 0x00, 'v128.store': 0x0b, 'f32x4.splat': 0x13, 'f32x4.add': 0xe4, 'f32x4.mul': 0xe6 };
