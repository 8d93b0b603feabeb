// resnet-wasm for Node: the module (the relaxed-SIMD build on Node >= 22, else SIMD128) is
// instantiated synchronously on import (`init()` resolves at once and may still be
// awaited, as in browsers).
import { readFileSync } from 'node:fs';
import { initSync, wasmFile } from './api.js';

initSync(readFileSync(new URL(`./${wasmFile()}`, import.meta.url)));

export { init as default, init, initSync, engineInfo, batchShare, decodeImage, supportsRelaxedSimd, supportsThreads, wasmFile, Model, Dataset, Trainer } from './api.js';
