//! `resnet-wasm`: the wasm-bindgen surface of the resnet engine. No numerics of its own:
//! everything is `resnet-core`; this crate converts between JS values and the core's
//! types and turns errors into JS exceptions carrying the engine's message.
//!
//! The friendly JavaScript API (`Model`, `Dataset`, `Trainer`, `init`) is the package's
//! `js/api.js`, which wraps the raw classes exported here (`WasmModel`, ...).

pub mod engine;
#[cfg(feature = "threads")]
pub mod threads;

use engine::{TrainOptions, TrainSession};
use js_sys::{Array, Object, Reflect, Uint8Array};
use resnet_core::classifier::{Classifier, LoadOptions};
use resnet_core::data::cifar::{load_cifar10_targz, Split};
use resnet_core::data::image::{decode_image, rgba_to_rgb, RgbImage};
use resnet_core::data::Dataset;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Mutex;
use wasm_bindgen::prelude::*;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = console, js_name = error)]
    fn console_error(s: &str);
}

/// Runs one call into the engine on a team (`resnet_core::kernels::split::team`): in the
/// threaded build the pool's other threads stay awake and serve its parallel loops until
/// it returns; without a pool it just runs `f`.
///
/// rayon puts an idle thread to sleep after a few rounds of `yield_now`, which spin for
/// microseconds natively but return at once in wasm, so between two parallel loops the
/// Workers would sleep, and waking one (`Atomics.notify`) costs about as much as a small
/// layer's work: two threads ran ResNet-20 at batch 1 slower than one.
fn keep_awake<R>(f: impl FnOnce() -> R) -> R {
    resnet_core::kernels::split::team(f)
}

/// The message of the last panic, kept for the JS wrapper to report.
static PANIC: Mutex<Option<String>> = Mutex::new(None);

/// Runs when the module is instantiated: installs the panic hook.
#[wasm_bindgen(start)]
pub fn start() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info.to_string();
        console_error(&format!("resnet-wasm panicked: {msg}"));
        if let Ok(mut p) = PANIC.lock() {
            *p = Some(msg);
        }
    }));
}

/// The message of a panic that happened since the last call, if any. After a panic the
/// instance's memory may be inconsistent: the wrapper refuses further calls.
#[wasm_bindgen(js_name = takePanic)]
pub fn take_panic() -> Option<String> {
    PANIC.lock().ok().and_then(|mut p| p.take())
}

/// Version, SIMD (SIMD128, relaxed SIMD) and threading of this build.
#[wasm_bindgen(js_name = engineInfo)]
pub fn engine_info() -> Result<JsValue, JsError> {
    to_js(&serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "simd128": cfg!(target_feature = "simd128"),
        "relaxedSimd": cfg!(target_feature = "relaxed-simd"),
        "threads": rayon::current_num_threads(),
        "models": resnet_core::model::MODEL_NAMES,
    }))
}

/// The share `{ offset, size }` of a batch of `batch` images that worker `index` of
/// `workers` data-parallel workers computes: the engine's one rule
/// ([`resnet_core::data::augment::batch_share`]), also `resnet train`'s over MPI.
#[wasm_bindgen(js_name = batchShare)]
pub fn batch_share(batch: f64, workers: f64, index: f64) -> Result<JsValue, JsError> {
    let batch = engine::whole_number(batch, "batch").map_err(err)? as usize;
    let workers = engine::whole_number(workers, "workers").map_err(err)? as usize;
    let index = engine::whole_number(index, "index").map_err(err)? as usize;
    if workers == 0 || index >= workers {
        return Err(JsError::new(&format!("worker {index} of {workers} does not exist")));
    }
    let share = resnet_core::data::augment::batch_share(batch, workers, index);
    to_js(&serde_json::json!({ "offset": share.start, "size": share.len() }))
}

/// A learning rate as the decimal it was given as (0.1, not 0.10000000149011612).
fn lr_js(lr: f32) -> f64 {
    lr.to_string().parse().unwrap_or(lr as f64)
}

fn err(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

fn to_js(v: &serde_json::Value) -> Result<JsValue, JsError> {
    js_sys::JSON::parse(&v.to_string()).map_err(|_| JsError::new("internal error: result is not JSON"))
}

fn opt_usize(v: Option<f64>, what: &str, default: usize) -> Result<usize, JsError> {
    match v {
        None => Ok(default),
        Some(v) => Ok(engine::whole_number(v, what).map_err(err)? as usize),
    }
}

fn strings(a: &Array, what: &str) -> Result<Vec<String>, JsError> {
    a.iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_string()
                .ok_or_else(|| JsError::new(&format!("{what}[{i}] is not a string")))
        })
        .collect()
}

/// Decodes a JPEG or PNG with the engine's decoder: `{ width, height, rgba }`.
#[wasm_bindgen(js_name = decodeImage)]
pub fn decode_image_js(bytes: &[u8]) -> Result<JsValue, JsError> {
    let img = decode_image(bytes, "image").map_err(err)?;
    let mut rgba = Vec::with_capacity(img.width * img.height * 4);
    for p in img.data.chunks_exact(3) {
        rgba.extend_from_slice(&[p[0], p[1], p[2], 255]);
    }
    let o = Object::new();
    let set = |k: &str, v: &JsValue| Reflect::set(&o, &k.into(), v).map(|_| ());
    set("width", &(img.width as u32).into()).map_err(|_| JsError::new("cannot build object"))?;
    set("height", &(img.height as u32).into()).map_err(|_| JsError::new("cannot build object"))?;
    set("rgba", &Uint8Array::from(&rgba[..]).into()).map_err(|_| JsError::new("cannot build object"))?;
    Ok(o.into())
}

/// A classifier: network, class names and preprocessing.
#[wasm_bindgen]
pub struct WasmModel {
    inner: Rc<RefCell<Classifier>>,
}

#[wasm_bindgen]
impl WasmModel {
    /// Our safetensors or a PyTorch checkpoint (zip or legacy), as the native importer.
    pub fn load(bytes: Vec<u8>) -> Result<WasmModel, JsError> {
        let c = Classifier::load_owned(bytes, &LoadOptions::default()).map_err(err)?;
        Ok(WasmModel {
            inner: Rc::new(RefCell::new(c)),
        })
    }

    /// A fresh network of the zoo (`resnet20`, `resnet8`, `plain20`, `resnet50`, ...).
    pub fn create(arch: &str, classes: f64, seed: f64) -> Result<WasmModel, JsError> {
        // Only in the tests' own build (feature `test-hooks`, never in the npm package):
        // a way to make the engine panic, to check what the JS wrapper does after a panic.
        #[cfg(feature = "test-hooks")]
        if arch == "panic-for-tests" {
            panic!("deliberate panic of the test-hooks build");
        }
        let classes = engine::whole_number(classes, "classes").map_err(err)? as usize;
        let seed = engine::whole_number(seed, "seed").map_err(err)?;
        let c = engine::create(arch, classes, seed).map_err(err)?;
        Ok(WasmModel {
            inner: Rc::new(RefCell::new(c)),
        })
    }

    /// This network with a new classifier for the classes `names` (from `seed`), all else
    /// kept: the start of fine-tuning on other classes.
    #[wasm_bindgen(js_name = withClasses)]
    pub fn with_classes(&self, names: Array, seed: f64) -> Result<WasmModel, JsError> {
        let classes = strings(&names, "classes")?;
        let seed = engine::whole_number(seed, "seed").map_err(err)?;
        let c = engine::with_classes(&self.inner.borrow(), classes, seed).map_err(err)?;
        Ok(WasmModel {
            inner: Rc::new(RefCell::new(c)),
        })
    }

    pub fn info(&self) -> Result<JsValue, JsError> {
        to_js(&engine::info(&mut self.inner.borrow_mut()))
    }

    /// Self-describing safetensors.
    pub fn save(&self) -> Result<Vec<u8>, JsError> {
        self.inner.borrow_mut().to_safetensors().map_err(err)
    }

    /// The logits (`n x classes`, row-major) of an already preprocessed `n x 3 x h x w`
    /// batch: the network alone, as an ONNX session runs it (no resizing, normalisation
    /// or softmax).
    pub fn forward(&self, input: &[f32], n: u32, height: u32, width: u32) -> Result<Vec<f32>, JsError> {
        let shape = vec![n as usize, 3, height as usize, width as usize];
        let want: usize = shape.iter().product();
        if input.len() != want {
            return Err(JsError::new(&format!(
                "forward: a batch of shape {shape:?} needs {want} values, found {}",
                input.len()
            )));
        }
        let mut c = self.inner.borrow_mut();
        keep_awake(|| Ok(c.logits(input, shape[0], shape[2], shape[3]).map_err(err)?.to_vec()))
    }

    /// Top-k of one RGBA image of any size.
    #[wasm_bindgen(js_name = classifyRgba)]
    pub fn classify_rgba(&self, rgba: &[u8], width: u32, height: u32, top_k: u32) -> Result<JsValue, JsError> {
        let img = rgba_to_rgb(rgba, width as usize, height as usize).map_err(err)?;
        self.classify(vec![img], top_k)
    }

    /// Top-k of many RGBA images, concatenated in `rgba`, of sizes `widths[i]` x `heights[i]`.
    #[wasm_bindgen(js_name = classifyRgbaBatch)]
    pub fn classify_rgba_batch(
        &self,
        rgba: &[u8],
        widths: &[u32],
        heights: &[u32],
        top_k: u32,
    ) -> Result<JsValue, JsError> {
        if widths.len() != heights.len() {
            return Err(JsError::new(&format!(
                "{} widths but {} heights",
                widths.len(),
                heights.len()
            )));
        }
        let mut images = Vec::with_capacity(widths.len());
        let mut at = 0usize;
        for (i, (&w, &h)) in widths.iter().zip(heights).enumerate() {
            let n = (w as usize).saturating_mul(h as usize).saturating_mul(4);
            let end = at.saturating_add(n);
            if end > rgba.len() {
                return Err(JsError::new(&format!(
                    "image {i} ({w}x{h} RGBA) needs bytes {at}..{end}, the buffer has {}",
                    rgba.len()
                )));
            }
            images.push(rgba_to_rgb(&rgba[at..end], w as usize, h as usize).map_err(err)?);
            at = end;
        }
        if at != rgba.len() {
            return Err(JsError::new(&format!(
                "the images take {at} bytes, the buffer has {}",
                rgba.len()
            )));
        }
        self.classify_many(images, top_k)
    }

    /// Top-k of encoded images (JPEG or PNG), decoded as the native CLI decodes them.
    #[wasm_bindgen(js_name = classifyImageBytes)]
    pub fn classify_image_bytes(&self, files: Array, top_k: u32) -> Result<JsValue, JsError> {
        let mut images = Vec::new();
        for (i, f) in files.iter().enumerate() {
            let bytes = f
                .dyn_into::<Uint8Array>()
                .map_err(|_| JsError::new(&format!("image {i} is not a Uint8Array")))?;
            images.push(decode_image(&bytes.to_vec(), &format!("image {i}")).map_err(err)?);
        }
        self.classify_many(images, top_k)
    }

    /// Accuracy and loss on the first `limit` images of `data` (all when absent).
    pub fn evaluate(&self, data: &WasmDataset, limit: Option<f64>, batch: Option<f64>) -> Result<JsValue, JsError> {
        let limit = limit
            .map(|l| engine::whole_number(l, "limit"))
            .transpose()
            .map_err(err)?;
        let batch = opt_usize(batch, "batch", 100)?;
        let mut c = self.inner.borrow_mut();
        to_js(&keep_awake(|| engine::evaluate(&mut c, &data.inner, limit.map(|l| l as usize), batch)).map_err(err)?)
    }

    /// Sets the preprocessing from statistics of `data`: `per-pixel` or `per-channel`.
    #[wasm_bindgen(js_name = normalizeFrom)]
    pub fn normalize_from(&self, data: &WasmDataset, kind: &str) -> Result<(), JsError> {
        engine::set_normalization(&mut self.inner.borrow_mut(), &data.inner, kind).map_err(err)
    }

    /// Batch-norm running statistics, flat (to exchange between data-parallel workers).
    pub fn buffers(&self) -> Vec<f32> {
        self.inner.borrow().params.buffers().to_vec()
    }

    #[wasm_bindgen(js_name = setBuffers)]
    pub fn set_buffers(&self, flat: &[f32]) -> Result<(), JsError> {
        self.inner.borrow_mut().params.set_buffers(flat).map_err(err)
    }

    /// Parameter gradients left by the last `computeGradients`, flat (empty before the first).
    pub fn gradients(&self) -> Vec<f32> {
        self.inner.borrow().params.grads().to_vec()
    }

    #[wasm_bindgen(js_name = setGradients)]
    pub fn set_gradients(&self, flat: &[f32]) -> Result<(), JsError> {
        self.inner.borrow_mut().params.set_grads(flat).map_err(err)
    }

    #[wasm_bindgen(js_name = parameterCount)]
    pub fn parameter_count(&self) -> u32 {
        self.inner.borrow().params.param_count() as u32
    }
}

impl WasmModel {
    fn classify(&self, images: Vec<RgbImage>, top_k: u32) -> Result<JsValue, JsError> {
        let v = self.classify_many(images, top_k)?;
        Reflect::get_u32(&v, 0).map_err(|_| JsError::new("internal error: empty result"))
    }

    fn classify_many(&self, images: Vec<RgbImage>, top_k: u32) -> Result<JsValue, JsError> {
        if images.is_empty() {
            return Ok(Array::new().into());
        }
        let preds = keep_awake(|| self.inner.borrow_mut().classify(&images, top_k as usize)).map_err(err)?;
        to_js(&engine::predictions_json(&preds))
    }
}

/// Images (u8 CHW) with labels and class names, held in wasm memory.
#[wasm_bindgen]
pub struct WasmDataset {
    inner: Rc<Dataset>,
}

#[wasm_bindgen]
impl WasmDataset {
    /// The official `cifar-10-binary.tar.gz` (split `train` or `test`) or one `.bin` batch.
    #[wasm_bindgen(js_name = fromCifar)]
    pub fn from_cifar(bytes: &[u8], split: &str) -> Result<WasmDataset, JsError> {
        let split = match split {
            "train" => Split::Train,
            "test" => Split::Test,
            other => return Err(JsError::new(&format!("split \"{other}\" is not one of train, test"))),
        };
        let d = load_cifar10_targz(bytes, split).map_err(err)?;
        Ok(WasmDataset { inner: Rc::new(d) })
    }

    /// Images as `format` (`rgba`, `rgb` or `chw`) bytes, one label each.
    #[wasm_bindgen(js_name = fromPixels)]
    pub fn from_pixels(
        pixels: &[u8],
        labels: &[u32],
        width: u32,
        height: u32,
        classes: Array,
        format: &str,
    ) -> Result<WasmDataset, JsError> {
        let classes = strings(&classes, "classes")?;
        let d = engine::dataset_from_pixels(pixels, labels, width as usize, height as usize, classes, format)
            .map_err(err)?;
        Ok(WasmDataset { inner: Rc::new(d) })
    }

    #[wasm_bindgen(getter)]
    pub fn length(&self) -> u32 {
        self.inner.len() as u32
    }

    #[wasm_bindgen(getter)]
    pub fn width(&self) -> u32 {
        self.inner.width as u32
    }

    #[wasm_bindgen(getter)]
    pub fn height(&self) -> u32 {
        self.inner.height as u32
    }

    pub fn classes(&self) -> Array {
        self.inner.classes.iter().map(|s| JsValue::from_str(s)).collect()
    }

    pub fn labels(&self) -> Vec<u32> {
        self.inner.labels.iter().map(|&l| l as u32).collect()
    }

    /// Image `i` as RGBA (e.g. to draw on a canvas).
    #[wasm_bindgen(js_name = imageRgba)]
    pub fn image_rgba(&self, i: u32) -> Result<Vec<u8>, JsError> {
        let d = &self.inner;
        if i as usize >= d.len() {
            return Err(JsError::new(&format!(
                "image {i} out of range: the data set has {}",
                d.len()
            )));
        }
        let chw = d.image(i as usize);
        let plane = d.width * d.height;
        let mut out = Vec::with_capacity(plane * 4);
        for p in 0..plane {
            out.extend_from_slice(&[chw[p], chw[plane + p], chw[2 * plane + p], 255]);
        }
        Ok(out)
    }

    /// Images `start..end` (e.g. one worker's shard).
    pub fn slice(&self, start: u32, end: u32) -> Result<WasmDataset, JsError> {
        let end = (end as usize).min(self.inner.len());
        let idx: Vec<usize> = (start as usize..end).collect();
        Ok(WasmDataset {
            inner: Rc::new(self.inner.subset(&idx).map_err(err)?),
        })
    }

    /// `(train, val)`: `val` images picked by a shuffle seeded with `seed`.
    pub fn split(&self, val: u32, seed: f64) -> Result<Array, JsError> {
        let seed = engine::whole_number(seed, "seed").map_err(err)?;
        let (t, v) = self.inner.split(val as usize, seed).map_err(err)?;
        let out = Array::new();
        out.push(&WasmDataset { inner: Rc::new(t) }.into());
        out.push(&WasmDataset { inner: Rc::new(v) }.into());
        Ok(out)
    }
}

/// SGD on a model, with the paper's augmentation, one batch per call.
#[wasm_bindgen]
pub struct WasmTrainer {
    model: Rc<RefCell<Classifier>>,
    session: TrainSession,
}

#[wasm_bindgen]
impl WasmTrainer {
    #[allow(clippy::too_many_arguments)]
    #[wasm_bindgen(constructor)]
    pub fn new(
        model: &WasmModel,
        lr: f32,
        momentum: f32,
        weight_decay: f32,
        batch: f64,
        schedule: &str,
        steps: f64,
        seed: f64,
        augment: bool,
        global_batch: f64,
        batch_offset: f64,
        head_only: bool,
    ) -> Result<WasmTrainer, JsError> {
        let opts = TrainOptions {
            lr,
            momentum,
            weight_decay,
            batch: engine::whole_number(batch, "batch").map_err(err)? as usize,
            schedule: schedule.to_string(),
            steps: engine::whole_number(steps, "steps").map_err(err)?,
            seed: engine::whole_number(seed, "seed").map_err(err)?,
            augment,
            global_batch: engine::whole_number(global_batch, "globalBatch").map_err(err)? as usize,
            batch_offset: engine::whole_number(batch_offset, "batchOffset").map_err(err)? as usize,
            head_only,
        };
        Ok(WasmTrainer {
            model: model.inner.clone(),
            session: TrainSession::new(&opts).map_err(err)?,
        })
    }

    /// One SGD step on the next batch of `data`: `{ iteration, loss, accuracy, lr }`.
    pub fn step(&mut self, data: &WasmDataset) -> Result<JsValue, JsError> {
        let mut model = self.model.borrow_mut();
        let s = keep_awake(|| self.session.step(&mut model, &data.inner)).map_err(err)?;
        to_js(&serde_json::json!({"iteration": s.iteration, "loss": s.loss, "accuracy": s.accuracy, "lr": lr_js(s.lr)}))
    }

    /// Forward and backward on the next batch without updating: `{ loss, accuracy, count }`.
    #[wasm_bindgen(js_name = computeGradients)]
    pub fn compute_gradients(&mut self, data: &WasmDataset) -> Result<JsValue, JsError> {
        let mut model = self.model.borrow_mut();
        let s = keep_awake(|| self.session.compute_gradients(&mut model, &data.inner)).map_err(err)?;
        to_js(&serde_json::json!({
            "loss": s.loss,
            "correct": s.correct,
            "count": s.count,
            "accuracy": s.correct as f64 / s.count.max(1) as f64,
        }))
    }

    /// One SGD update from the gradients in the model; returns the learning rate used.
    #[wasm_bindgen(js_name = applyGradients)]
    pub fn apply_gradients(&mut self) -> Result<f64, JsError> {
        let mut model = self.model.borrow_mut();
        let lr = keep_awake(|| self.session.apply_gradients(&mut model)).map_err(err)?;
        Ok(lr_js(lr))
    }

    #[wasm_bindgen(getter)]
    pub fn iteration(&self) -> f64 {
        self.session.iteration() as f64
    }

    #[wasm_bindgen(getter)]
    pub fn lr(&self) -> f64 {
        lr_js(self.session.lr())
    }
}
