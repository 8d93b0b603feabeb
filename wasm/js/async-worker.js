// The engine's Worker of the asynchronous API (`async.js` starts it in browsers): one
// wasm instance; requests `{ id, ...request }` in, `{ id, result }` or `{ id, error }` out.
import { init } from './api.js';
import { Host } from './host.js';

const host = new Host();
let ready = null;

onmessage = async ({ data }) => {
  const { id } = data;
  try {
    ready ??= init(data.wasm, { threads: data.threads });
    await ready;
    const { result, transfer = [] } = host.handle(data);
    postMessage({ id, result }, transfer);
  } catch (e) {
    postMessage({ id, error: e && e.message ? e.message : String(e) });
  }
};
