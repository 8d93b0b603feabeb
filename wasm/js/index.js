// resnet-wasm for browsers (with or without a bundler): `await init()` once, then use the API.
export { init as default, init, initSync, engineInfo, batchShare, decodeImage, Model, Dataset, Trainer, panicForTests } from './api.js';
