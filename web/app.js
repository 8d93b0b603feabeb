// The page: classification through the asynchronous API (the engine in its own Worker),
// training in data-parallel Web Workers.
import { Model, engineInfo } from './pkg/async.js';
import { LineChart } from './chart.js';

const $ = (id) => document.getElementById(id);
let model = null;

function showError(message) {
  const box = $('error');
  box.textContent = message;
  box.hidden = false;
  console.warn(message);
}

/** A later success takes an earlier error off the screen. */
function clearError() {
  $('error').hidden = true;
  $('error').textContent = '';
}

// ---------- tabs (WAI-ARIA tabs: arrows, Home and End move between them) ----------
const tabs = [...document.querySelectorAll('[role="tab"]')];
function selectTab(tab, focus = false) {
  for (const t of tabs) {
    const on = t === tab;
    t.classList.toggle('active', on);
    t.setAttribute('aria-selected', String(on));
    t.tabIndex = on ? 0 : -1;
    $(t.dataset.tab).hidden = !on;
  }
  if (focus) tab.focus();
  stopCamera();
}
for (const tab of tabs) {
  tab.addEventListener('click', () => selectTab(tab));
  tab.addEventListener('keydown', (e) => {
    const i = tabs.indexOf(tab);
    const to = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[e.key];
    if (to === undefined) return;
    e.preventDefault();
    selectTab(tabs[(to + tabs.length) % tabs.length], true);
  });
}

// ---------- classify ----------
function describe(m, source) {
  const i = m.info();
  const pre = i.preprocessing.kind === 'per_channel' ? 'mean/std per channel' : 'per-pixel mean';
  return `${source}: ${i.architecture}, ${i.parameters.toLocaleString()} parameters, ${i.numClasses} classes ` +
    `(${i.classes.slice(0, 4).join(', ')}${i.numClasses > 4 ? ', ...' : ''}), input ${i.inputSize}x${i.inputSize}, ${pre}`;
}

async function setModel(m, source) {
  if (model) model.free();
  model = m;
  $('model-info').textContent = describe(m, source);
  window.resnetPage.modelInfo = m.info();
  if (lastImage) await classifyImage(lastImage);
}

let lastImage = null;

async function classifyImage(img) {
  lastImage = img;
  const canvas = $('preview');
  const scale = Math.min(canvas.width / img.width, canvas.height / img.height, 8);
  const ctx = canvas.getContext('2d');
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.imageSmoothingEnabled = scale < 1;
  ctx.drawImage(img.source, 0, 0, img.width * scale, img.height * scale);
  canvas.setAttribute('aria-label', `the image being classified, ${img.width}x${img.height} pixels`);
  if (!model) return;
  const t0 = performance.now();
  const top = await model.classify({ data: img.rgba, width: img.width, height: img.height }, { topk: 5 });
  const ms = performance.now() - t0;
  $('bars').replaceChildren(...top.map((p) => {
    const li = document.createElement('li');
    li.innerHTML = `<div class="bar-label"><span></span><span>${(100 * p.probability).toFixed(2)} %</span></div>` +
      `<div class="bar" style="width:${Math.max(1, 100 * p.probability)}%"></div>`;
    li.querySelector('span').textContent = p.label;
    return li;
  }));
  $('timing').textContent = `${img.width}x${img.height} image classified in ${ms.toFixed(1)} ms (in the engine's worker)`;
  window.resnetPage.lastPredictions = top;
  clearError();
}

async function fromBlob(blob) {
  const bitmap = await createImageBitmap(blob);
  const c = new OffscreenCanvas(bitmap.width, bitmap.height);
  const ctx = c.getContext('2d');
  ctx.drawImage(bitmap, 0, 0);
  const data = ctx.getImageData(0, 0, bitmap.width, bitmap.height);
  return { source: bitmap, width: bitmap.width, height: bitmap.height, rgba: data.data };
}

async function handleImageFile(file) {
  try {
    await classifyImage(await fromBlob(file));
  } catch (e) {
    showError(`cannot read that image: ${e.message || e}`);
  }
}

$('image-file').addEventListener('change', (e) => e.target.files[0] && handleImageFile(e.target.files[0]));
const drop = $('drop');
drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', (e) => {
  e.preventDefault();
  drop.classList.remove('over');
  const f = e.dataTransfer.files[0];
  if (f) handleImageFile(f);
});
document.addEventListener('paste', (e) => {
  const item = [...e.clipboardData.items].find((i) => i.type.startsWith('image/'));
  if (item) handleImageFile(item.getAsFile());
});
/** Stops the cameras (their light goes off): after a picture, on another tab, when hidden. */
function stopCamera() {
  const video = $('video');
  if (video.srcObject) for (const t of video.srcObject.getTracks()) t.stop();
  video.srcObject = null;
  video.hidden = true;
  $('snap').hidden = true;
  $('camera').textContent = 'Use the camera';
  stopTrainCamera();
  window.resnetPage && (window.resnetPage.cameraOn = false);
}
$('camera').addEventListener('click', async () => {
  if ($('video').srcObject) {
    stopCamera();
    return;
  }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ video: true });
    const video = $('video');
    video.srcObject = stream;
    video.hidden = false;
    $('snap').hidden = false;
    $('camera').textContent = 'Stop the camera';
    window.resnetPage.cameraOn = true;
    clearError();
  } catch (e) {
    showError(`the camera is not available: ${e.message || e}`);
  }
});
$('snap').addEventListener('click', async () => {
  const video = $('video');
  const c = new OffscreenCanvas(video.videoWidth, video.videoHeight);
  c.getContext('2d').drawImage(video, 0, 0);
  stopCamera();
  await handleImageFile(await c.convertToBlob());
});
document.addEventListener('visibilitychange', () => document.hidden && stopCamera());
$('weights-file').addEventListener('change', async (e) => {
  const f = e.target.files[0];
  if (!f) return;
  try {
    await setModel(await Model.load(f), f.name);
    clearError();
  } catch (err) {
    showError(`cannot load ${f.name}: ${err.message || err}`);
  }
});

// ---------- the visitor's own images ----------
/** Side of the images the networks train on (CIFAR's). */
const SIDE = 32;
/** Class name -> list of SIDE x SIDE RGBA images. */
const own = new Map();

function showOwn() {
  const list = $('own-classes');
  const items = [...own].map(([name, imgs]) => {
    const li = document.createElement('li');
    li.textContent = `${name}: ${imgs.length} image${imgs.length === 1 ? '' : 's'}`;
    return li;
  });
  if (!items.length) items.push(Object.assign(document.createElement('li'), { textContent: 'no images yet' }));
  list.replaceChildren(...items);
  window.resnetPage.ownClasses = Object.fromEntries([...own].map(([k, v]) => [k, v.length]));
}

/** The centre square of anything drawable, reduced to SIDE x SIDE RGBA. */
function square(source, width, height) {
  const c = new OffscreenCanvas(SIDE, SIDE);
  const ctx = c.getContext('2d', { willReadFrequently: true });
  const s = Math.min(width, height);
  ctx.drawImage(source, (width - s) / 2, (height - s) / 2, s, s, 0, 0, SIDE, SIDE);
  return new Uint8Array(ctx.getImageData(0, 0, SIDE, SIDE).data.buffer);
}

function addOwn(name, rgba) {
  if (!own.has(name)) own.set(name, []);
  own.get(name).push(rgba);
}

$('folder').addEventListener('change', async (e) => {
  const files = [...e.target.files].filter((f) => f.type.startsWith('image/'));
  let skipped = 0;
  for (const f of files) {
    // "chosen folder/class/picture.jpg": the class is the picture's folder.
    const parts = (f.webkitRelativePath || f.name).split('/');
    if (parts.length < 3) {
      skipped++;
      continue;
    }
    try {
      const bitmap = await createImageBitmap(f);
      addOwn(parts[parts.length - 2], square(bitmap, bitmap.width, bitmap.height));
      bitmap.close();
    } catch {
      skipped++;
    }
  }
  showOwn();
  status(`${files.length - skipped} images in ${own.size} classes` + (skipped ? `; ${skipped} skipped (not in a class folder, or unreadable)` : ''));
  clearError();
});
function stopTrainCamera() {
  const video = $('cam-video');
  if (video.srcObject) for (const t of video.srcObject.getTracks()) t.stop();
  video.srcObject = null;
  video.hidden = true;
  $('cam-add').hidden = true;
  $('cam-start').textContent = 'Use the camera';
}
$('cam-start').addEventListener('click', async () => {
  if ($('cam-video').srcObject) {
    stopTrainCamera();
    return;
  }
  try {
    const video = $('cam-video');
    video.srcObject = await navigator.mediaDevices.getUserMedia({ video: true });
    video.hidden = false;
    $('cam-add').hidden = false;
    $('cam-start').textContent = 'Stop the camera';
    clearError();
  } catch (e) {
    showError(`the camera is not available: ${e.message || e}`);
  }
});
$('cam-add').addEventListener('click', () => {
  const video = $('cam-video');
  const name = $('cam-class').value.trim();
  if (!name) {
    showError('give the class of the picture a name');
    return;
  }
  if (!video.videoWidth) return;
  addOwn(name, square(video, video.videoWidth, video.videoHeight));
  showOwn();
  clearError();
});
$('own-clear').addEventListener('click', () => {
  own.clear();
  showOwn();
});
for (const r of document.querySelectorAll('input[name="source"]')) {
  r.addEventListener('change', () => {
    const mine = $('source-own').checked;
    $('own-source').hidden = !mine;
    $('cifar-source').hidden = mine;
    if (!mine) stopTrainCamera();
  });
}

/** The visitor's images as one RGBA buffer with labels and class names. */
function ownData() {
  const classes = [...own.keys()].filter((k) => own.get(k).length);
  if (classes.length < 2) throw new Error('training needs images of at least 2 classes');
  const n = classes.reduce((s, k) => s + own.get(k).length, 0);
  const pixels = new Uint8Array(n * SIDE * SIDE * 4);
  const labels = [];
  let at = 0;
  classes.forEach((k, label) => {
    for (const img of own.get(k)) {
      pixels.set(img, at);
      at += img.length;
      labels.push(label);
    }
  });
  return { pixels, labels, classes };
}

// ---------- train ----------
const lossChart = new LineChart($('loss-chart'), { title: 'training loss' });
lossChart.set('loss', { color: '#d62728' });
const errorChart = new LineChart($('error-chart'), { title: 'error in %', yMax: 100 });
errorChart.set('train', { color: '#1f77b4', dashed: true });
errorChart.set('test', { color: '#1f77b4' });
$('workers').value = Math.max(1, navigator.hardwareConcurrency || 1);

const run = { workers: [], state: 'idle', iteration: 0, weights: null };

function call(worker, message, transfer = []) {
  return new Promise((resolve, reject) => {
    worker.onmessage = ({ data }) => (data.type === 'error' ? reject(new Error(data.message)) : resolve(data));
    worker.onerror = (e) => reject(new Error(`a training worker crashed: ${e.message || 'unknown error'}`));
    worker.postMessage(message, transfer);
  });
}

const all = (message) => Promise.all(run.workers.map((w) => call(w, message)));

function setButtons() {
  const s = run.state;
  $('start').disabled = s === 'running' || s === 'paused' || s === 'starting';
  $('pause').disabled = s !== 'running';
  $('resume').disabled = s !== 'paused';
  $('stop').disabled = !(s === 'running' || s === 'paused');
  $('download').disabled = !run.workers.length;
  $('use-model').disabled = !run.workers.length;
  window.resnetPage.trainState = s;
}

function status(text) {
  $('train-status').textContent = text;
}

async function syncBatchNorm() {
  const stats = await all({ type: 'buffers' });
  const avg = new Float32Array(stats[0].buffers.length);
  for (const s of stats) s.buffers.forEach((v, i) => (avg[i] += v / stats.length));
  await all({ type: 'setBuffers', buffers: avg });
}

async function trainLoop(opts) {
  const n = run.workers.length;
  const started = performance.now();
  let images = 0;
  // The training loss and error since the last chart point (kept across a pause).
  const window_ = run.window;
  // Gradients computed for the next step; a pause can leave them pending (the workers'
  // batch-norm statistics then include that step's forward pass).
  let grads = run.pending || null;
  run.pending = null;
  while (run.iteration < opts.iters && run.state === 'running') {
    grads ||= await all({ type: 'grad' });
    // Each worker's gradient is the mean over its part of the batch: weight by its size.
    const total = grads.reduce((sum, g) => sum + g.count, 0);
    const avg = new Float32Array(grads[0].gradients.length);
    for (const g of grads) {
      const v = g.gradients, share = g.count / total;
      for (let i = 0; i < v.length; i++) avg[i] += v[i] * share;
      window_.loss += g.loss * g.count;
      window_.wrong += g.count - g.correct;
      window_.count += g.count;
      images += g.count;
    }
    // The workers go on to the next step's gradients in the same round trip, unless the
    // run ends or evaluates after this step (evaluation wants the statistics of this one).
    const after = run.iteration + 1;
    const next = after < opts.iters && after % opts.evalEvery !== 0;
    const stepped = await Promise.all(run.workers.map((w, i) => {
      const mine = i === n - 1 ? avg : avg.slice();
      return call(w, { type: 'step', gradients: mine, next }, [mine.buffer]);
    }));
    const applied = stepped[0].applied;
    grads = next ? stepped.map((s) => s.next) : null;
    run.iteration = applied.iteration + 1; // applyGradients gives the index of the step it applied
    const rate = images / ((performance.now() - started) / 1000);
    if (run.iteration % 10 === 0 || run.iteration === opts.iters) {
      lossChart.add('loss', run.iteration, window_.loss / window_.count);
      errorChart.add('train', run.iteration, (100 * window_.wrong) / window_.count);
      lossChart.draw();
      errorChart.draw();
      Object.assign(window_, { loss: 0, wrong: 0, count: 0 });
    }
    if (run.iteration % opts.evalEvery === 0 || run.iteration === opts.iters) {
      await syncBatchNorm();
      const e = await call(run.workers[0], { type: 'evaluate', limit: opts.evalLimit });
      errorChart.add('test', run.iteration, 100 * (1 - e.accuracy));
      errorChart.draw();
      window.resnetPage.lastTestAccuracy = e.accuracy;
    }
    const eta = (opts.iters - run.iteration) * opts.batch / Math.max(rate, 1e-9);
    status(`iteration ${run.iteration}/${opts.iters}, lr ${applied.lr.toPrecision(3)}, ` +
      `${rate.toFixed(1)} images/s on ${n} worker(s), ETA ${formatTime(eta)}`);
    window.resnetPage.iteration = run.iteration;
    window.resnetPage.imagesPerSecond = rate;
  }
  run.pending = grads;
  if (run.state === 'running') {
    run.state = 'done';
    status(`finished ${run.iteration} iterations`);
  }
  setButtons();
}

function formatTime(s) {
  if (!Number.isFinite(s)) return '?';
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = Math.floor(s % 60);
  return h ? `${h}h${String(m).padStart(2, '0')}m` : `${m}m${String(sec).padStart(2, '0')}s`;
}

function options() {
  const num = (id) => Number($(id).value);
  return {
    arch: $('arch').value,
    lr: num('lr'), momentum: num('momentum'), weightDecay: num('wd'), batch: Math.max(1, num('batch')),
    iters: Math.max(1, num('iters')), schedule: $('schedule').value, workers: Math.max(1, num('workers')),
    source: $('source-own').checked ? 'own' : 'cifar', start: $('start-from').value,
    evalEvery: Math.max(1, num('eval-every')), evalLimit: Math.max(1, num('eval-limit')),
  };
}

function megabytes(n) {
  return (n / 1e6).toFixed(1);
}

/** The chosen file or the URL's body as a stream, with its size when known; a download
 * shows its progress. */
async function dataStream() {
  const file = $('data-file').files[0];
  if (file) return { stream: file.stream(), size: file.size, name: file.name };
  const url = $('data-url').value.trim();
  if (!url) throw new Error('choose the CIFAR-10 binary .tar.gz or give its URL');
  const res = await fetch(url);
  if (!res.ok) throw new Error(`cannot fetch ${url}: HTTP ${res.status}`);
  const size = Number(res.headers.get('content-length')) || 0;
  const bar = $('download-progress');
  bar.hidden = false;
  bar.value = 0;
  let got = 0;
  const progress = new TransformStream({
    transform(chunk, controller) {
      got += chunk.byteLength;
      if (size) bar.value = got / size;
      status(size ? `downloading ${megabytes(got)} of ${megabytes(size)} MB (${Math.floor((100 * got) / size)} %)` : `downloading: ${megabytes(got)} MB`);
      controller.enqueue(chunk);
    },
    flush() {
      bar.value = 1;
      window.resnetPage.downloaded = got;
    },
  });
  return { stream: res.body.pipeThrough(progress), size, name: url };
}

/** The data as bytes the engine reads without decompressing: a gzip stream is inflated
 * here, once, by the browser's DecompressionStream (the workers get the plain tar). */
async function dataBytes() {
  const { stream } = await dataStream();
  const [probe, rest] = stream.tee();
  const reader = probe.getReader();
  const first = (await reader.read()).value ?? new Uint8Array(0);
  reader.cancel();
  const gzip = first[0] === 0x1f && first[1] === 0x8b;
  const body = gzip ? rest.pipeThrough(new DecompressionStream('gzip')) : rest;
  if (gzip) status('decompressing the data...');
  return new Response(body).arrayBuffer();
}

$('start').addEventListener('click', async () => {
  const opts = options();
  run.state = 'starting';
  setButtons();
  clearError();
  try {
    status('reading the data...');
    const mine = opts.source === 'own' ? ownData() : null;
    const data = mine ? mine.pixels.buffer : await dataBytes();
    $('download-progress').hidden = true;
    // Fine-tuning starts from the default model's bytes (the browser's cache has them).
    const base = opts.start === 'scratch' ? null : await defaultModelBytes();
    if (mine) {
      // Every image of a small set is held out for testing beyond a fifth (as the worker splits).
      const held = mine.labels.length >= 10 ? Math.max(2, Math.round(mine.labels.length / 5)) : 0;
      const trainCount = mine.labels.length - held;
      if (opts.batch > trainCount) {
        opts.batch = trainCount;
        $('batch').value = String(trainCount);
      }
    }
    for (const w of run.workers) w.terminate();
    run.workers = Array.from({ length: opts.workers }, () => new Worker('worker.js', { type: 'module' }));
    run.iteration = 0;
    run.pending = null;
    run.window = { loss: 0, wrong: 0, count: 0 };
    lossChart.clear();
    errorChart.clear();
    status(`decoding the data in ${opts.workers} worker(s)...`);
    const seed = 1;
    // Every worker needs its own copy of the data; the last gets the original. Each copy
    // is transferred (moved), not cloned again by postMessage.
    const ready = await Promise.all(run.workers.map((w, index) => {
      const last = index === run.workers.length - 1;
      const bytes = last ? data : data.slice(0);
      const baseBytes = base && (last ? base : base.slice(0));
      return call(w, {
        type: 'init', arch: opts.arch, data: bytes, seed, start: opts.start, base: baseBytes,
        own: mine && { labels: mine.labels, classes: mine.classes, side: SIDE },
        // Each worker takes its share of every batch by the engine's rule (batchShare).
        workers: run.workers.length, index,
        options: { lr: opts.lr, momentum: opts.momentum, weightDecay: opts.weightDecay,
          globalBatch: opts.batch, schedule: opts.schedule, steps: opts.iters },
      }, baseBytes ? [bytes, baseBytes] : [bytes]);
    }));
    const what = opts.start === 'scratch' ? `a fresh ${opts.arch}` : `the default model (${opts.start === 'head' ? 'its classifier only' : 'the whole network'})`;
    status(`training ${what}, ${ready[0].parameters.toLocaleString()} parameters, on ${ready[0].train} images of ${ready[0].classes.length} classes...`);
    run.name = opts.start === 'scratch' ? opts.arch : ready[0].architecture;
    run.state = 'running';
    run.opts = opts;
    setButtons();
    await trainLoop(opts);
  } catch (e) {
    run.state = 'failed';
    setButtons();
    $('download-progress').hidden = true;
    showError(`training stopped: ${e.message || e}${run.workers.length ? '\nThe last weights can still be downloaded.' : ''}`);
  }
});
$('pause').addEventListener('click', () => { run.state = 'paused'; setButtons(); status(`paused at iteration ${run.iteration}`); });
$('resume').addEventListener('click', () => {
  run.state = 'running';
  setButtons();
  trainLoop(run.opts).catch((e) => { run.state = 'failed'; setButtons(); showError(`training stopped: ${e.message || e}`); });
});
$('stop').addEventListener('click', () => { run.state = 'stopped'; setButtons(); status(`stopped at iteration ${run.iteration}`); });

async function trainedWeights() {
  await syncBatchNorm();
  return (await call(run.workers[0], { type: 'save' })).bytes;
}

$('download').addEventListener('click', async () => {
  try {
    const bytes = await trainedWeights();
    const a = document.createElement('a');
    a.href = URL.createObjectURL(new Blob([bytes], { type: 'application/octet-stream' }));
    a.download = `${run.name}-${run.opts.source === 'own' ? 'own-images' : 'cifar10'}-${run.iteration}.safetensors`;
    a.click();
  } catch (e) {
    showError(`cannot save the weights: ${e.message || e}`);
  }
});
$('use-model').addEventListener('click', async () => {
  try {
    await setModel(await Model.load(await trainedWeights()), `trained here (${run.iteration} iterations)`);
    selectTab($('tab-classify'), true);
  } catch (e) {
    showError(`cannot use the trained model: ${e.message || e}`);
  }
});

// ---------- start-up ----------
let defaultModelName = null;

/** The default model's file (fine-tuning starts from it). */
async function defaultModelBytes() {
  if (!defaultModelName) throw new Error('fine-tuning needs a default model (models/models.json names none)');
  const res = await fetch(`models/${defaultModelName}`);
  if (!res.ok) throw new Error(`cannot fetch models/${defaultModelName}: HTTP ${res.status}`);
  return res.arrayBuffer();
}

window.resnetPage = { ready: false, charts: { loss: lossChart, error: errorChart } };
(async () => {
  try {
    const engine = (window.resnetPage.engine = await engineInfo());
    // Which build runs: relaxed SIMD or SIMD128, and the threads of a cross-origin-isolated page.
    const threads = engine.threads > 1 ? `, ${engine.threads} threads` : ', one thread';
    $('engine-info').textContent = ` (${engine.relaxedSimd ? 'relaxed SIMD' : 'SIMD128'}${threads})`;
    // models/models.json names the default model, so a page without one makes no failing request.
    const manifest = await (await fetch('models/models.json')).json();
    defaultModelName = manifest.default;
    if (manifest.default) {
      await setModel(await Model.load(`models/${manifest.default}`), `default model (${manifest.default})`);
    } else {
      $('model-info').textContent = 'No default model in models/models.json; load weights to classify.';
    }
  } catch (e) {
    showError(`cannot start the engine: ${e.message || e}`);
  }
  setButtons();
  window.resnetPage.ready = true;
})();
