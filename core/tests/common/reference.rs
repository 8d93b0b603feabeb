//! An independent f64 forward pass of a whole `ResNet` (naive loops, training-mode batch
//! norm), for golden comparisons and finite-difference gradient checks without f32 noise.

use resnet_core::layers::batchnorm::BatchNorm2d;
use resnet_core::layers::conv::Conv2d;
use resnet_core::model::{ResNet, Shortcut};

/// An NCHW activation in f64.
#[derive(Clone)]
pub struct Act {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub v: Vec<f64>,
}

fn conv(x: &Act, layer: &Conv2d) -> Act {
    let (k, s, p) = (layer.kernel, layer.stride, layer.padding as isize);
    let oh = (x.h + 2 * layer.padding - k) / s + 1;
    let ow = (x.w + 2 * layer.padding - k) / s + 1;
    let kout = layer.out_channels;
    let w = &layer.weight.value;
    let mut v = vec![0f64; x.n * kout * oh * ow];
    for n in 0..x.n {
        for o in 0..kout {
            for i in 0..oh {
                for j in 0..ow {
                    let mut acc = layer.bias.as_ref().map_or(0.0, |b| b.value[o] as f64);
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

fn batchnorm_train(x: &Act, bn: &BatchNorm2d) -> Act {
    let plane = x.h * x.w;
    let m = (x.n * plane) as f64;
    let mut out = x.clone();
    for c in 0..x.c {
        let vals = || (0..x.n).flat_map(move |n| ((n * x.c + c) * plane..(n * x.c + c + 1) * plane).map(|i| x.v[i]));
        let mean = vals().sum::<f64>() / m;
        let var = vals().map(|v| (v - mean).powi(2)).sum::<f64>() / m;
        let inv = 1.0 / (var + bn.eps as f64).sqrt();
        for n in 0..x.n {
            for i in (n * x.c + c) * plane..(n * x.c + c + 1) * plane {
                out.v[i] = bn.weight.value[c] as f64 * (x.v[i] - mean) * inv + bn.bias.value[c] as f64;
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

/// The logits of `model` on `input` (NCHW, `n` images of `h x w`), in f64, with batch
/// statistics as in training mode.
pub fn forward(model: &ResNet, input: &[f32], n: usize, h: usize, w: usize) -> Vec<f64> {
    let x = Act {
        n,
        c: model.config.in_channels,
        h,
        w,
        v: input.iter().map(|&v| v as f64).collect(),
    };
    let mut a = relu(batchnorm_train(&conv(&x, &model.conv1), &model.bn1));
    if let Some(mp) = &model.maxpool {
        a = maxpool(&a, mp.kernel, mp.stride, mp.padding);
    }
    for block in &model.blocks {
        let input = a.clone();
        let last = block.convs.len() - 1;
        for (i, (c, bn)) in block.convs.iter().zip(&block.bns).enumerate() {
            a = batchnorm_train(&conv(&a, c), bn);
            if i < last {
                a = relu(a);
            }
        }
        match &block.shortcut {
            Shortcut::None => {}
            Shortcut::Identity => a.v.iter_mut().zip(&input.v).for_each(|(o, i)| *o += i),
            Shortcut::ZeroPad { stride } => {
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
            Shortcut::Projection { conv: pc, bn } => {
                let s = batchnorm_train(&conv(&input, pc), bn);
                a.v.iter_mut().zip(&s.v).for_each(|(o, i)| *o += i);
            }
        }
        a = relu(a);
    }
    let plane = (a.h * a.w) as f64;
    let pooled: Vec<f64> = a.v.chunks(a.h * a.w).map(|p| p.iter().sum::<f64>() / plane).collect();
    let (fin, fout) = (model.fc.in_features, model.fc.out_features);
    let mut logits = vec![0f64; n * fout];
    for i in 0..n {
        for o in 0..fout {
            logits[i * fout + o] = model.fc.bias.value[o] as f64
                + (0..fin)
                    .map(|k| pooled[i * fin + k] * model.fc.weight.value[o * fin + k] as f64)
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
