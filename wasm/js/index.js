// resnet-wasm for browsers (with or without a bundler): `await init()` once, then use the API.
export { init as default, init, initSync, engineInfo, batchShare, decodeImage, supportsRelaxedSimd, supportsThreads, wasmFile, Model, Dataset, Trainer } from './api.js';
