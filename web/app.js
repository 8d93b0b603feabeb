// The page: classification on the main thread, training in data-parallel Web Workers.
import init, { Model, batchShare } from './pkg/index.js';
import { LineChart } from './chart.js';

const $ = (id) => document.getElementById(id);
let model = null;

function showError(message) {
  const box = $('error');
  box.textContent = message;
  box.hidden = false;
  console.warn(message);
}

// ---------- tabs ----------
for (const tab of document.querySelectorAll('.tab')) {
  tab.addEventListener('click', () => {
    document.querySelectorAll('.tab').forEach((t) => t.classList.toggle('active', t === tab));
    document.querySelectorAll('.panel').forEach((p) => p.classList.toggle('active', p.id === tab.dataset.tab));
  });
}

// ---------- classify ----------
function describe(m, source) {
  const i = m.info();
  const pre = i.preprocessing.kind === 'per_channel' ? 'mean/std per channel' : 'per-pixel mean';
  return `${source}: ${i.architecture}, ${i.parameters.toLocaleString()} parameters, ${i.numClasses} classes ` +
    `(${i.classes.slice(0, 4).join(', ')}${i.numClasses > 4 ? ', ...' : ''}), input ${i.inputSize}x${i.inputSize}, ${pre}`;
}

function setModel(m, source) {
  if (model) model.free();
  model = m;
  $('model-info').textContent = describe(m, source);
  window.resnetPage.modelInfo = m.info();
  if (lastImage) classifyImage(lastImage);
}

let lastImage = null;

function classifyImage(img) {
  lastImage = img;
  const canvas = $('preview');
  const scale = Math.min(canvas.width / img.width, canvas.height / img.height, 8);
  const ctx = canvas.getContext('2d');
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.imageSmoothingEnabled = scale < 1;
  ctx.drawImage(img.source, 0, 0, img.width * scale, img.height * scale);
  if (!model) return;
  const t0 = performance.now();
  const top = model.classify(img.rgba, img.width, img.height, 5);
  const ms = performance.now() - t0;
  $('bars').replaceChildren(...top.map((p) => {
    const li = document.createElement('li');
    li.innerHTML = `<div class="bar-label"><span></span><span>${(100 * p.probability).toFixed(2)} %</span></div>` +
      `<div class="bar" style="width:${Math.max(1, 100 * p.probability)}%"></div>`;
    li.querySelector('span').textContent = p.label;
    return li;
  }));
  $('timing').textContent = `${img.width}x${img.height} image classified in ${ms.toFixed(1)} ms`;
  window.resnetPage.lastPredictions = top;
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
    classifyImage(await fromBlob(file));
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
$('camera').addEventListener('click', async () => {
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ video: true });
    const video = $('video');
    video.srcObject = stream;
    video.hidden = false;
    $('snap').hidden = false;
  } catch (e) {
    showError(`the camera is not available: ${e.message || e}`);
  }
});
$('snap').addEventListener('click', async () => {
  const video = $('video');
  const c = new OffscreenCanvas(video.videoWidth, video.videoHeight);
  c.getContext('2d').drawImage(video, 0, 0);
  classifyImage(await fromBlob(await c.convertToBlob()));
});
$('weights-file').addEventListener('change', async (e) => {
  const f = e.target.files[0];
  if (!f) return;
  try {
    setModel(Model.load(new Uint8Array(await f.arrayBuffer())), f.name);
  } catch (err) {
    showError(`cannot load ${f.name}: ${err.message || err}`);
  }
});

// ---------- train ----------
const lossChart = new LineChart($('loss-chart'));
lossChart.set('loss', { color: '#d62728' });
const errorChart = new LineChart($('error-chart'), { yMax: 100 });
errorChart.set('train', { color: '#1f77b4', dashed: true });
errorChart.set('test', { color: '#1f77b4' });
$('workers').value = Math.max(1, Math.min(navigator.hardwareConcurrency || 1, 8));

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
  let window_ = { loss: 0, wrong: 0, count: 0 };
  while (run.iteration < opts.iters && run.state === 'running') {
    const grads = await all({ type: 'grad' });
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
    const applied = await Promise.all(run.workers.map((w) => call(w, { type: 'apply', gradients: avg })));
    run.iteration = applied[0].iteration;
    const rate = images / ((performance.now() - started) / 1000);
    if (run.iteration % 10 === 0 || run.iteration === opts.iters) {
      lossChart.add('loss', run.iteration, window_.loss / window_.count);
      errorChart.add('train', run.iteration, (100 * window_.wrong) / window_.count);
      lossChart.draw();
      errorChart.draw();
      window_ = { loss: 0, wrong: 0, count: 0 };
    }
    if (run.iteration % opts.evalEvery === 0 || run.iteration === opts.iters) {
      await syncBatchNorm();
      const e = await call(run.workers[0], { type: 'evaluate', limit: opts.evalLimit });
      errorChart.add('test', run.iteration, 100 * (1 - e.accuracy));
      errorChart.draw();
      window.resnetPage.lastTestAccuracy = e.accuracy;
    }
    const eta = (opts.iters - run.iteration) * opts.batch / Math.max(rate, 1e-9);
    status(`iteration ${run.iteration}/${opts.iters}, lr ${applied[0].lr.toPrecision(3)}, ` +
      `${rate.toFixed(1)} images/s on ${n} worker(s), ETA ${formatTime(eta)}`);
    window.resnetPage.iteration = run.iteration;
    window.resnetPage.imagesPerSecond = rate;
  }
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
    evalEvery: Math.max(1, num('eval-every')), evalLimit: Math.max(1, num('eval-limit')),
  };
}

async function dataBytes() {
  const file = $('data-file').files[0];
  if (file) return file.arrayBuffer();
  const url = $('data-url').value.trim();
  if (!url) throw new Error('choose the CIFAR-10 binary .tar.gz or give its URL');
  const res = await fetch(url);
  if (!res.ok) throw new Error(`cannot fetch ${url}: HTTP ${res.status}`);
  return res.arrayBuffer();
}

$('start').addEventListener('click', async () => {
  const opts = options();
  run.state = 'starting';
  setButtons();
  $('error').hidden = true;
  try {
    status('reading the data...');
    const data = await dataBytes();
    for (const w of run.workers) w.terminate();
    run.workers = Array.from({ length: opts.workers }, () => new Worker('worker.js', { type: 'module' }));
    run.iteration = 0;
    lossChart.clear();
    errorChart.clear();
    status(`decoding the data in ${opts.workers} worker(s)...`);
    // Each worker's share of the batch (the engine's rule); the shares add up to the batch.
    const shares = run.workers.map((_, i) => batchShare(opts.batch, opts.workers, i));
    if (shares.some((s) => s.size === 0)) throw new Error(`a batch of ${opts.batch} cannot feed ${opts.workers} workers`);
    const seed = 1;
    const ready = await Promise.all(run.workers.map((w, index) => call(w, {
      type: 'init', arch: opts.arch, data, seed,
      options: { lr: opts.lr, momentum: opts.momentum, weightDecay: opts.weightDecay, batch: shares[index].size,
        globalBatch: opts.batch, batchOffset: shares[index].offset,
        schedule: opts.schedule, steps: opts.iters },
    })));
    status(`training ${opts.arch} (${ready[0].parameters.toLocaleString()} parameters) on ${ready[0].train} images...`);
    run.state = 'running';
    run.opts = opts;
    setButtons();
    await trainLoop(opts);
  } catch (e) {
    run.state = 'failed';
    setButtons();
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
    a.download = `${run.opts.arch}-cifar10-${run.iteration}.safetensors`;
    a.click();
  } catch (e) {
    showError(`cannot save the weights: ${e.message || e}`);
  }
});
$('use-model').addEventListener('click', async () => {
  try {
    setModel(Model.load(await trainedWeights()), `trained here (${run.iteration} iterations)`);
    $('tab-classify').click();
  } catch (e) {
    showError(`cannot use the trained model: ${e.message || e}`);
  }
});

// ---------- start-up ----------
window.resnetPage = { ready: false, charts: { loss: lossChart, error: errorChart } };
(async () => {
  try {
    await init();
    // models/models.json names the default model, so a page without one makes no failing request.
    const manifest = await (await fetch('models/models.json')).json();
    if (manifest.default) {
      const res = await fetch(`models/${manifest.default}`);
      if (!res.ok) throw new Error(`cannot fetch models/${manifest.default}: HTTP ${res.status}`);
      setModel(Model.load(new Uint8Array(await res.arrayBuffer())), `default model (${manifest.default})`);
    } else {
      $('model-info').textContent = 'No default model in models/models.json; load weights to classify.';
    }
  } catch (e) {
    showError(`cannot start the engine: ${e.message || e}`);
  }
  setButtons();
  window.resnetPage.ready = true;
})();
