// Types of resnet-wasm: the resnet engine (He et al. 2015) compiled to WebAssembly.

/** Bytes accepted wherever a file's contents are expected. */
export type Bytes = Uint8Array | ArrayBuffer | ArrayBufferView;

/** What the module can be initialised from (as wasm-bindgen's `--target web` init). */
export type InitInput = RequestInfo | URL | Response | BufferSource | WebAssembly.Module;

export interface InitOptions {
  /** `'auto'` (the default without `input`): the threaded build with
   * `navigator.hardwareConcurrency` Workers (at most 8) where `supportsThreads()`, else one
   * thread. A count: that many threads where `supportsThreads()` (then an `input` must be
   * `threads/resnet_wasm_bg.wasm`), one elsewhere. 1 (the default with `input`): the
   * single-thread build. */
  threads?: 'auto' | number;
}

/** Initialises the module (browsers: fetches `wasmFile()` next to the module by default,
 * or `threads/resnet_wasm_bg.wasm` and starts its Workers where `supportsThreads()`).
 * Idempotent; in Node the module is already initialised on import. */
export function init(input?: InitInput | Promise<InitInput>, options?: InitOptions): Promise<void>;
export default init;

/** Initialises synchronously from the .wasm bytes or a compiled module. */
export function initSync(module: BufferSource | WebAssembly.Module): void;

/** Whether this context runs the threaded build: cross-origin isolated (COOP/COEP), with
 * Workers and WebAssembly shared memory. False in Node. */
export function supportsThreads(): boolean;

/** Whether this JavaScript engine runs WebAssembly relaxed SIMD (validates a one-instruction probe). */
export function supportsRelaxedSimd(): boolean;

/** The .wasm `init()` loads by default: `'resnet_wasm_relaxed_bg.wasm'` (relaxed SIMD, fused
 * multiply-adds) where `supportsRelaxedSimd()`, else `'resnet_wasm_bg.wasm'` (SIMD128). */
export function wasmFile(): 'resnet_wasm_relaxed_bg.wasm' | 'resnet_wasm_bg.wasm';

export interface EngineInfo {
  version: string;
  /** Whether the build uses WebAssembly SIMD128. */
  simd128: boolean;
  /** Whether the build uses relaxed SIMD (the `resnet_wasm_relaxed_bg.wasm` build). */
  relaxedSimd: boolean;
  /** Threads of the engine's pool: those `init` started with the threaded build, else 1. */
  threads: number;
  /** Architectures `Model.create` knows. */
  models: string[];
}
export function engineInfo(): EngineInfo;

/** Data parallel: the images `offset .. offset + size` of a batch of `batch` that worker
 * `index` of `workers` computes (sizes differ by at most one, the first workers' larger;
 * the native `resnet train` over MPI splits batches by the same rule). */
export function batchShare(batch: number, workers: number, index: number): { offset: number; size: number };

export interface DecodedImage {
  width: number;
  height: number;
  /** width * height * 4 bytes, alpha 255. */
  rgba: Uint8Array;
}
/** Decodes a JPEG or PNG with the engine's decoder (the same as the native CLI's). */
export function decodeImage(bytes: Bytes): DecodedImage;

export interface Prediction {
  index: number;
  label: string;
  probability: number;
}

export type Preprocessing =
  | { kind: 'per_channel'; mean: [number, number, number]; std: [number, number, number] }
  | { kind: 'per_pixel_mean'; height: number; width: number };

export interface ModelInfo {
  /** Zoo name, e.g. `resnet20`. */
  architecture: string;
  /** Weighted layers (convolutions and the classifier). */
  depth: number;
  parameters: number;
  numClasses: number;
  classes: string[];
  /** Side of the square input the network takes. */
  inputSize: number;
  inputChannels: number;
  preprocessing: Preprocessing;
  /** The full network configuration, as stored in our safetensors files. */
  config: Record<string, unknown>;
  /** Other metadata of the file (e.g. how it was trained). */
  metadata: Record<string, string>;
}

export interface Evaluation {
  total: number;
  correct: number;
  accuracy: number;
  top5Correct: number;
  top5Accuracy: number;
  /** Mean cross-entropy. */
  loss: number;
}

/** One image as a canvas gives it (an `ImageData` fits). */
export interface RgbaImage {
  rgba?: Uint8Array | Uint8ClampedArray;
  data?: Uint8Array | Uint8ClampedArray;
  width: number;
  height: number;
}

export class Model {
  private constructor();
  /** Our safetensors, or a PyTorch checkpoint (.pth/.pt/.th, zip or legacy pickle). Throws on bad bytes. */
  static load(bytes: Bytes): Model;
  /** A freshly initialised network of the zoo (`resnet8` ... `resnet1202`, `plain20`, `resnet18` ... `resnet152`). */
  static create(arch: string, options?: { classes?: number; seed?: number }): Model;
  /** This network with a new classifier for `names` (initialised from `seed`), every other
   * weight and the preprocessing kept: where fine-tuning on other classes starts. */
  withClasses(names: string[], options?: { seed?: number }): Model;
  info(): ModelInfo;
  /** Self-describing safetensors. */
  save(): Uint8Array;
  /** Top-k of RGBA pixels of any size; resized and normalised as the native CLI does. */
  classify(rgba: Uint8Array | Uint8ClampedArray, width: number, height: number, topK?: number): Prediction[];
  /** Top-k of many images in one batch. */
  classifyBatch(images: RgbaImage[], topK?: number): Prediction[][];
  /** Logits (`n x classes`) of a preprocessed `[n, 3, height, width]` batch: the network alone. */
  forward(input: Float32Array | ArrayLike<number>, shape: [number, number, number, number]): Float32Array;
  /** Top-k of an encoded JPEG or PNG, decoded as the native CLI decodes it. */
  classifyImageBytes(bytes: Bytes, topK?: number): Prediction[];
  classifyImageBytesBatch(files: Bytes[], topK?: number): Prediction[][];
  /** Accuracy and loss on the first `limit` images (all by default). */
  evaluate(dataset: Dataset, limit?: number, options?: { batch?: number }): Evaluation;
  /** Replaces the preprocessing with statistics of `dataset` (before training a fresh model). */
  normalizeFrom(dataset: Dataset, kind?: 'per-pixel' | 'per-channel'): void;
  /** Batch-norm running means and variances, flat. */
  buffers(): Float32Array;
  setBuffers(flat: Float32Array | ArrayLike<number>): void;
  readonly parameterCount: number;
  free(): void;
}

export class Dataset {
  private constructor();
  /** The official `cifar-10-binary.tar.gz` or one `.bin` batch file (whatever `split`). */
  static fromCifar(bytes: Bytes, options?: { split?: 'train' | 'test' }): Dataset;
  /** `labels.length` images of `width` x `height`, back to back in `pixels`. */
  static fromPixels(
    pixels: Bytes,
    labels: ArrayLike<number>,
    options: { width: number; height: number; classes?: string[]; format?: 'rgba' | 'rgb' | 'chw' },
  ): Dataset;
  readonly length: number;
  readonly width: number;
  readonly height: number;
  readonly classes: string[];
  labels(): Uint32Array;
  imageRgba(index: number): Uint8Array;
  /** Images `start` to `end` (exclusive). */
  slice(start?: number, end?: number): Dataset;
  /** `[train, val]`, `val` images picked by a shuffle seeded with `seed`. */
  split(val: number, seed?: number): [Dataset, Dataset];
  free(): void;
}

export interface TrainerOptions {
  /** Initial learning rate (0.1). */
  lr?: number;
  /** SGD momentum (0.9). */
  momentum?: number;
  /** Weight decay (1e-4). */
  weightDecay?: number;
  /** Images per step (128). */
  batch?: number;
  /** 'paper': /10 at 50 % and 75 % of `steps`; 'cosine' to 0 at `steps`; 'constant'. */
  schedule?: 'paper' | 'cosine' | 'constant';
  /** Iterations the schedule is laid out for (64000). */
  steps?: number;
  /** Seed of shuffling and augmentation (0). */
  seed?: number;
  /** The paper's augmentation: pad 4, random crop, random flip (true). */
  augment?: boolean;
  /** Data parallel: the images of one step across all workers (0: just `batch`). Workers
   * with the same seed and data each compute `batch` of them, from `batchOffset` on, and
   * together see exactly the batches one worker would; only whole batches are used. */
  globalBatch?: number;
  /** Data parallel: where this worker's `batch` images start in the global batch (0). */
  batchOffset?: number;
  /** Fine-tune the classifier only: every other weight keeps its value (false). */
  headOnly?: boolean;
}

export interface StepStats {
  iteration: number;
  loss: number;
  /** Top-1 accuracy on the batch, training mode. */
  accuracy: number;
  lr: number;
}

export interface BatchStats {
  loss: number;
  accuracy: number;
  correct: number;
  count: number;
}

export class Trainer {
  constructor(model: Model, options?: TrainerOptions);
  readonly model: Model;
  /** One SGD step on the next batch of `dataset` (epochs shuffled from the seed). */
  step(dataset: Dataset): StepStats;
  evaluate(dataset: Dataset, limit?: number, options?: { batch?: number }): Evaluation;
  /** Data parallel: forward and backward on the next batch, no update. */
  computeGradients(dataset: Dataset): BatchStats;
  /** Data parallel: the gradients of the last `computeGradients`, flat (empty before the first). */
  gradients(): Float32Array;
  /** Data parallel: one update from (averaged) gradients, or this instance's own. */
  applyGradients(gradients?: Float32Array | ArrayLike<number>): { iteration: number; lr: number };
  /** Batch-norm running statistics (average them across workers from time to time). */
  buffers(): Float32Array;
  setBuffers(flat: Float32Array | ArrayLike<number>): void;
  readonly iteration: number;
  readonly lr: number;
  free(): void;
}
