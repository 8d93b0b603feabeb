// Types of resnet-wasm/async: the engine behind Promises (a Worker in pages).
import type { BatchStats, Bytes, EngineInfo, Evaluation, ModelInfo, Prediction, RgbaImage, StepStats, TrainerOptions } from './index.js';

export type { BatchStats, Bytes, EngineInfo, Evaluation, ModelInfo, Prediction, RgbaImage, StepStats, TrainerOptions };

/** Where bytes can come from: a URL (fetched), bytes, a Blob (a File) or a Response. */
export type Source = string | URL | Bytes | Blob | Response;

/** Anything `classify` takes: a drawable (decoded on a canvas), a Blob or encoded JPEG/PNG
 * bytes (decoded by the browser where it can draw, else by the engine), or RGBA pixels. */
export type ImageInput =
  | HTMLImageElement
  | HTMLCanvasElement
  | HTMLVideoElement
  | OffscreenCanvas
  | ImageBitmap
  | ImageData
  | Blob
  | Bytes
  | RgbaImage;

export interface ClassifyOptions {
  /** How many classes to return, most probable first (5). */
  topk?: number;
}

/** Chooses where the engine runs, before the first call: a module Worker (`worker: true`,
 * the default in a page) or the calling thread (`false`, the default in Node and Workers);
 * `wasm` is the module's URL or bytes (default: the `.wasm` beside the package's files). */
export function configure(options: { worker?: boolean; wasm?: string | URL | BufferSource; threads?: 'auto' | number }): void;

/** `'worker'` or `'local'` once the engine has been called; null before. */
export function backendKind(): 'worker' | 'local' | null;

export function engineInfo(): Promise<EngineInfo>;

export class Model {
  private constructor();
  /** Our safetensors or a PyTorch checkpoint (.pth/.pt/.th), from a URL, bytes, a Blob or a Response. */
  static load(source: Source): Promise<Model>;
  /** A freshly initialised network of the zoo. */
  static create(arch: string, options?: { classes?: number; seed?: number }): Promise<Model>;
  /** The model's description as loaded (no engine call). */
  info(): ModelInfo;
  /** This network with a new classifier for `names`, all else kept. */
  withClasses(names: string[], options?: { seed?: number }): Promise<Model>;
  classify(image: ImageInput, options?: ClassifyOptions): Promise<Prediction[]>;
  classifyBatch(images: ImageInput[], options?: ClassifyOptions): Promise<Prediction[][]>;
  forward(input: Float32Array | ArrayLike<number>, shape: [number, number, number, number]): Promise<Float32Array>;
  save(): Promise<Uint8Array>;
  evaluate(dataset: Dataset, limit?: number, options?: { batch?: number }): Promise<Evaluation>;
  normalizeFrom(dataset: Dataset, kind?: 'per-pixel' | 'per-channel'): Promise<void>;
  buffers(): Promise<Float32Array>;
  setBuffers(flat: Float32Array | ArrayLike<number>): Promise<void>;
  free(): Promise<void>;
}

export class Dataset {
  private constructor();
  static fromCifar(source: Source, options?: { split?: 'train' | 'test' }): Promise<Dataset>;
  static fromPixels(
    pixels: Bytes,
    labels: ArrayLike<number>,
    options: { width: number; height: number; classes?: string[]; format?: 'rgba' | 'rgb' | 'chw' },
  ): Promise<Dataset>;
  readonly length: number;
  readonly width: number;
  readonly height: number;
  readonly classes: string[];
  labels(): Promise<Uint32Array>;
  imageRgba(index: number): Promise<Uint8Array>;
  slice(start?: number, end?: number): Promise<Dataset>;
  split(val: number, seed?: number): Promise<[Dataset, Dataset]>;
  free(): Promise<void>;
}

export class Trainer {
  /** A bad option rejects the first call. */
  constructor(model: Model, options?: TrainerOptions);
  readonly model: Model;
  step(dataset: Dataset): Promise<StepStats>;
  computeGradients(dataset: Dataset): Promise<BatchStats>;
  gradients(): Promise<Float32Array>;
  applyGradients(gradients?: Float32Array | ArrayLike<number>): Promise<{ iteration: number; lr: number }>;
  evaluate(dataset: Dataset, limit?: number, options?: { batch?: number }): Promise<Evaluation>;
  buffers(): Promise<Float32Array>;
  setBuffers(flat: Float32Array | ArrayLike<number>): Promise<void>;
  /** Iterations done and the learning rate of the next update. */
  state(): Promise<{ iteration: number; lr: number }>;
  free(): Promise<void>;
}
