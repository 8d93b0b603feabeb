// resnet-wasm for Node: the module is instantiated synchronously on import (`init()`
// resolves at once and may still be awaited, as in browsers).
import { readFileSync } from 'node:fs';
import { initSync } from './api.js';

initSync(readFileSync(new URL('./resnet_wasm_bg.wasm', import.meta.url)));

export { init as default, init, initSync, engineInfo, batchShare, decodeImage, Model, Dataset, Trainer, panicForTests } from './api.js';
