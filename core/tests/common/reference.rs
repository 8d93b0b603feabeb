//! An independent f64 forward pass of a whole network (naive loops, training-mode batch
//! norm) from its `Params` and structure (`Arch`), for golden comparisons and
//! finite-difference gradient checks without f32 noise.

use resnet_core::model::{Arch, ConvBn, ShortcutKind};
use resnet_core::Params;

/// An NCHW activation in f64.
#[derive(Clone)]
pub struct Act {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub v: Vec<f64>,
}

/// The convolution of `layer` (weights `w`, optional bias `bias`) on `x`, in f64.
pub fn conv_with(x: &Act, layer: &ConvBn, w: &[f32], bias: Option<&[f32]>) -> Act {
    let (k, s, p) = (layer.kernel, layer.stride, layer.pad as isize);
    let oh = (x.h + 2 * layer.pad - k) / s + 1;
    let ow = (x.w + 2 * layer.pad - k) / s + 1;
    let kout = layer.out_channels;
    let mut v = vec![0f64; x.n * kout * oh * ow];
    for n in 0..x.n {
        for o in 0..kout {
            for i in 0..oh {
                for j in 0..ow {
                    let mut acc = bias.map_or(0.0, |b| b[o] as f64);
                    for c in 0..x.c {
                        for a in 0..k {
                            for b in 0..k {
                                let ih = (i * s + a) as isize - p;
                                let iw = (j * s + b) as isize - p;
                                if ih >= 0 && iw >= 0 && (ih as usize) < x.h && (iw as usize) < x.w {
                                    acc += x.v[((n * x.c + c) * x.h + ih as usize) * x.w + iw as usize]
                                        * w[((o * x.c + c) * k + a) * k + b] as f64;
                                }
                            }
                        }
                    }
                    v[((n * kout + o) * oh + i) * ow + j] = acc;
                }
            }
        }
    }
    Act {
        n: x.n,
        c: kout,
        h: oh,
        w: ow,
        v,
    }
}

/// Training-mode batch norm (batch statistics, eps 1e-5) with `gamma` and `beta`, in f64.
pub fn batchnorm_train(x: &Act, gamma: &[f32], beta: &[f32]) -> Act {
    let plane = x.h * x.w;
    let m = (x.n * plane) as f64;
    let mut out = x.clone();
    for c in 0..x.c {
        let vals = || (0..x.n).flat_map(move |n| ((n * x.c + c) * plane..(n * x.c + c + 1) * plane).map(|i| x.v[i]));
        let mean = vals().sum::<f64>() / m;
        let var = vals().map(|v| (v - mean).powi(2)).sum::<f64>() / m;
        let inv = 1.0 / (var + 1e-5f32 as f64).sqrt();
        for n in 0..x.n {
            for i in (n * x.c + c) * plane..(n * x.c + c + 1) * plane {
                out.v[i] = gamma[c] as f64 * (x.v[i] - mean) * inv + beta[c] as f64;
            }
        }
    }
    out
}

fn relu(mut x: Act) -> Act {
    x.v.iter_mut().for_each(|v| *v = v.max(0.0));
    x
}

fn maxpool(x: &Act, k: usize, s: usize, p: usize) -> Act {
    let oh = (x.h + 2 * p - k) / s + 1;
    let ow = (x.w + 2 * p - k) / s + 1;
    let mut v = vec![f64::NEG_INFINITY; x.n * x.c * oh * ow];
    for nc in 0..x.n * x.c {
        for i in 0..oh {
            for j in 0..ow {
                for a in 0..k {
                    for b in 0..k {
                        let ih = (i * s + a) as isize - p as isize;
                        let iw = (j * s + b) as isize - p as isize;
                        if ih >= 0 && iw >= 0 && (ih as usize) < x.h && (iw as usize) < x.w {
                            let val = x.v[(nc * x.h + ih as usize) * x.w + iw as usize];
                            let o = &mut v[(nc * oh + i) * ow + j];
                            *o = o.max(val);
                        }
                    }
                }
            }
        }
    }
    Act {
        n: x.n,
        c: x.c,
        h: oh,
        w: ow,
        v,
    }
}

/// Convolution and training-mode batch norm of `cb` with the tensors of `p`.
fn conv_bn(x: &Act, cb: &ConvBn, p: &Params) -> Act {
    let y = conv_with(x, cb, p.tensor(&format!("{}.weight", cb.conv)), None);
    batchnorm_train(
        &y,
        p.tensor(&format!("{}.weight", cb.bn)),
        p.tensor(&format!("{}.bias", cb.bn)),
    )
}

/// The logits of the network of `p` on `input` (NCHW, `n` images of `h x w`), in f64,
/// with batch statistics as in training mode.
pub fn forward(p: &Params, input: &[f32], n: usize, h: usize, w: usize) -> Vec<f64> {
    let arch = Arch::of(p.config()).unwrap();
    let x = Act {
        n,
        c: p.config().in_channels,
        h,
        w,
        v: input.iter().map(|&v| v as f64).collect(),
    };
    let mut a = relu(conv_bn(&x, &arch.stem, p));
    if arch.maxpool {
        a = maxpool(&a, 3, 2, 1);
    }
    for block in &arch.blocks {
        let input = a.clone();
        let last = block.stages.len() - 1;
        for (i, stage) in block.stages.iter().enumerate() {
            a = conv_bn(&a, stage, p);
            if i < last {
                a = relu(a);
            }
        }
        match &block.shortcut {
            ShortcutKind::None => {}
            ShortcutKind::Identity => a.v.iter_mut().zip(&input.v).for_each(|(o, i)| *o += i),
            ShortcutKind::ZeroPad { stride } => {
                let pad = (a.c - input.c) / 2;
                for nn in 0..a.n {
                    for c in 0..input.c {
                        for i in 0..a.h {
                            for j in 0..a.w {
                                a.v[((nn * a.c + c + pad) * a.h + i) * a.w + j] +=
                                    input.v[((nn * input.c + c) * input.h + i * stride) * input.w + j * stride];
                            }
                        }
                    }
                }
            }
            ShortcutKind::Projection(pc) => {
                let s = conv_bn(&input, pc, p);
                a.v.iter_mut().zip(&s.v).for_each(|(o, i)| *o += i);
            }
        }
        a = relu(a);
    }
    let plane = (a.h * a.w) as f64;
    let pooled: Vec<f64> = a.v.chunks(a.h * a.w).map(|p| p.iter().sum::<f64>() / plane).collect();
    let (fin, fout) = (arch.features, arch.classes);
    let (fw, fb) = (p.tensor("fc.weight"), p.tensor("fc.bias"));
    let mut logits = vec![0f64; n * fout];
    for i in 0..n {
        for o in 0..fout {
            logits[i * fout + o] = fb[o] as f64
                + (0..fin)
                    .map(|k| pooled[i * fin + k] * fw[o * fin + k] as f64)
                    .sum::<f64>();
        }
    }
    logits
}

/// Mean softmax cross-entropy in f64.
pub fn cross_entropy(logits: &[f64], labels: &[u32]) -> f64 {
    let classes = logits.len() / labels.len();
    let mut total = 0.0;
    for (row, &l) in logits.chunks(classes).zip(labels) {
        let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = row.iter().map(|v| (v - max).exp()).sum::<f64>().ln() + max;
        total += lse - row[l as usize];
    }
    total / labels.len() as f64
}
