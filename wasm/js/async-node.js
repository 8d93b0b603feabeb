// resnet-wasm/async for Node: the module is instantiated on import (as the `node` entry
// does) and the engine runs in the calling thread behind Promises.
import './node.js';

export { configure, backendKind, engineInfo, Model, Dataset, Trainer } from './async.js';
