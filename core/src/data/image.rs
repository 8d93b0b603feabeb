//! Decoding JPEG/PNG bytes to 8-bit RGB, and the preprocessing of torchvision's
//! classification transforms (`Resize`, `CenterCrop`, `ToTensor`, `Normalize`) with the
//! same arithmetic as PIL, so that pretrained weights see the inputs they were trained on.

use super::{DataError, Result};
use std::io::Cursor;

/// Largest accepted width or height of a decoded image.
pub const MAX_SIDE: u32 = 16384;
/// Largest accepted number of pixels of a decoded image.
pub const MAX_PIXELS: u64 = 100_000_000;
/// ImageNet channel means used by torchvision's pretrained models (in [0, 1] units).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations used by torchvision's pretrained models.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// An 8-bit RGB image, interleaved (HWC, row-major).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `height * width * 3` bytes: R, G, B of each pixel, rows top to bottom.
    pub data: Vec<u8>,
}

impl RgbImage {
    /// Wraps HWC RGB bytes, checking their length.
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Result<Self> {
        let expected = width
            .checked_mul(height)
            .and_then(|p| p.checked_mul(3))
            .ok_or_else(|| DataError::Invalid(format!("image size {width}x{height} overflows")))?;
        if data.len() != expected {
            return Err(DataError::Image {
                file: "RGB buffer".to_string(),
                detail: format!("{width}x{height} RGB needs {expected} bytes, found {}", data.len()),
            });
        }
        Ok(RgbImage { width, height, data })
    }

    /// The RGB value of pixel (x, y); panics out of bounds like slice indexing.
    pub fn pixel(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.width + x) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }
}

fn image_err(source: &str, detail: String) -> DataError {
    DataError::Image {
        file: source.to_string(),
        detail,
    }
}

/// The format and the size `(width, height)` an image's header declares, checked against
/// [`MAX_SIDE`] and [`MAX_PIXELS`], without decoding its pixels.
pub fn image_dimensions(bytes: &[u8], source: &str) -> Result<(usize, usize)> {
    let (_, (w, h)) = header(bytes, source)?;
    Ok((w as usize, h as usize))
}

fn header(bytes: &[u8], source: &str) -> Result<(::image::ImageFormat, (u32, u32))> {
    use ::image::{ImageFormat, ImageReader};
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| image_err(source, format!("cannot read image: {e}")))?;
    let format = match reader.format() {
        Some(f @ (ImageFormat::Jpeg | ImageFormat::Png)) => f,
        Some(f) => {
            return Err(image_err(
                source,
                format!("unsupported image format {f:?}, expected JPEG or PNG"),
            ))
        }
        None => {
            let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
            return Err(image_err(
                source,
                format!(
                    "not a JPEG or PNG: {} bytes starting with [{}]",
                    bytes.len(),
                    head.join(" ")
                ),
            ));
        }
    };
    let (w, h) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| image_err(source, format!("cannot read {format:?} header: {e}")))?;
    if w > MAX_SIDE || h > MAX_SIDE || w as u64 * h as u64 > MAX_PIXELS {
        return Err(image_err(
            source,
            format!(
                "image is {w}x{h}, larger than the limit of {MAX_SIDE}x{MAX_SIDE} \
                 and {MAX_PIXELS} pixels"
            ),
        ));
    }
    if w == 0 || h == 0 {
        return Err(image_err(source, format!("image is empty ({w}x{h})")));
    }
    Ok((format, (w, h)))
}

/// Decodes a JPEG or PNG (grey, grey+alpha, RGB, RGBA, 8 or 16 bits) to 8-bit RGB, dropping
/// any alpha like PIL's `.convert('RGB')`; images above [`MAX_SIDE`] or [`MAX_PIXELS`]
/// are refused before their pixels are decoded.
pub fn decode_image(bytes: &[u8], source: &str) -> Result<RgbImage> {
    use ::image::{ImageReader, Limits};
    let (format, (w, h)) = header(bytes, source)?;
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_PIXELS * 8 + (64 << 20));
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| image_err(source, format!("cannot decode {format:?} ({w}x{h}): {e}")))?;
    let rgb = img.to_rgb8();
    let (width, height) = (rgb.width() as usize, rgb.height() as usize);
    Ok(RgbImage {
        width,
        height,
        data: rgb.into_raw(),
    })
}

/// Converts RGBA pixels (e.g. a browser canvas's `ImageData`) to RGB by dropping alpha.
pub fn rgba_to_rgb(rgba: &[u8], width: usize, height: usize) -> Result<RgbImage> {
    let expected = width
        .checked_mul(height)
        .and_then(|p| p.checked_mul(4))
        .ok_or_else(|| DataError::Invalid(format!("image size {width}x{height} overflows")))?;
    if rgba.len() != expected {
        return Err(image_err(
            "RGBA buffer",
            format!("{width}x{height} RGBA needs {expected} bytes, found {}", rgba.len()),
        ));
    }
    let mut data = Vec::with_capacity(width * height * 3);
    for p in rgba.chunks_exact(4) {
        data.extend_from_slice(&p[..3]);
    }
    Ok(RgbImage { width, height, data })
}

/// Fixed-point precision of PIL's 8-bit resampling (`PRECISION_BITS` in Resample.c).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per-output-pixel filter taps: the first input index, and the fixed-point weights.
struct Taps {
    first: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

/// PIL's `precompute_coeffs` for the bilinear (triangle) filter, followed by
/// `normalize_coeffs_8bpc`: support scales with the downscale factor (antialiasing).
/// Only the outputs in `range` are computed (entry `i` is output `range.start + i`).
fn bilinear_taps(in_size: usize, out_size: usize, range: std::ops::Range<usize>) -> Taps {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // the triangle filter's support is 1
    let ss = 1.0 / filterscale;
    let mut first = Vec::with_capacity(range.len());
    let mut weights = Vec::with_capacity(range.len());
    for xx in range {
        let center = (xx as f64 + 0.5) * scale;
        // C's (int) casts truncate toward zero, as `as i64` does.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
        let w: Vec<f64> = (xmin..xmax)
            .map(|x| {
                let t = ((x as f64 - center + 0.5) * ss).abs();
                if t < 1.0 {
                    1.0 - t
                } else {
                    0.0
                }
            })
            .collect();
        let total: f64 = w.iter().sum();
        let fixed = w
            .iter()
            .map(|&k| {
                let k = if total != 0.0 { k / total } else { k };
                let v = k * (1u32 << PRECISION_BITS) as f64;
                if v < 0.0 {
                    (v - 0.5) as i32
                } else {
                    (v + 0.5) as i32
                }
            })
            .collect();
        first.push(xmin);
        weights.push(fixed);
    }
    Taps { first, weights }
}

/// PIL's `clip8`: drops the fixed-point fraction and clamps to a byte.
fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes like PIL's `Image.resize(size, Image.BILINEAR)` (what torchvision's `Resize`
/// does to PIL images): separable triangle filter widened by the downscale factor
/// (antialiased), horizontal pass then vertical, each rounded to u8 with PIL's fixed-point
/// arithmetic. A same-size resize is the identity; an empty source gives black.
pub fn resize_bilinear_antialias(img: &RgbImage, new_w: usize, new_h: usize) -> RgbImage {
    resize_window(img, new_w, new_h, (0, 0), (new_w, new_h))
}

/// The window of `size` (width, height) at `origin` (left, top) of
/// [`resize_bilinear_antialias`]`(img, new_w, new_h)`, computed without the rest of the
/// resized image: the same bytes as resizing then cropping, at a cost bounded by the
/// source and the window (not the resized image, which a 16384x1 source resized to a
/// shorter side of 256 would make a gigapixel). The window must lie inside the resize.
fn resize_window(img: &RgbImage, new_w: usize, new_h: usize, origin: (usize, usize), size: (usize, usize)) -> RgbImage {
    let ((left, top), (out_w, out_h)) = (origin, size);
    debug_assert!(left + out_w <= new_w && top + out_h <= new_h);
    if img.width == 0 || img.height == 0 || new_w == 0 || new_h == 0 {
        return RgbImage {
            width: out_w,
            height: out_h,
            data: vec![0; out_w * out_h * 3],
        };
    }
    let half = 1i64 << (PRECISION_BITS - 1);
    // Horizontal pass over every source row, for the window's columns only.
    let w = out_w;
    let mut cur = vec![0u8; w * img.height * 3];
    if new_w != img.width {
        let taps = bilinear_taps(img.width, new_w, left..left + out_w);
        for (y, row) in cur.chunks_exact_mut(w * 3).enumerate() {
            let srow = &img.data[y * img.width * 3..(y + 1) * img.width * 3];
            for (xx, px) in row.chunks_exact_mut(3).enumerate() {
                let x0 = taps.first[xx];
                for (c, v) in px.iter_mut().enumerate() {
                    let mut acc = half;
                    for (j, &k) in taps.weights[xx].iter().enumerate() {
                        acc += srow[(x0 + j) * 3 + c] as i64 * k as i64;
                    }
                    *v = clip8(acc);
                }
            }
        }
    } else {
        for (y, row) in cur.chunks_exact_mut(w * 3).enumerate() {
            let s = (y * img.width + left) * 3;
            row.copy_from_slice(&img.data[s..s + w * 3]);
        }
    }
    // Vertical pass for the window's rows.
    let mut out = vec![0u8; w * out_h * 3];
    if new_h != img.height {
        let taps = bilinear_taps(img.height, new_h, top..top + out_h);
        for (yy, row) in out.chunks_exact_mut(w * 3).enumerate() {
            let y0 = taps.first[yy];
            for (i, v) in row.iter_mut().enumerate() {
                let mut acc = half;
                for (j, &k) in taps.weights[yy].iter().enumerate() {
                    acc += cur[(y0 + j) * w * 3 + i] as i64 * k as i64;
                }
                *v = clip8(acc);
            }
        }
    } else {
        out.copy_from_slice(&cur[top * w * 3..(top + out_h) * w * 3]);
    }
    RgbImage {
        width: out_w,
        height: out_h,
        data: out,
    }
}

/// torchvision's `Resize(size)` then `CenterCrop((out_h, out_w))`, computing only the
/// pixels the crop keeps (see [`resize_window`]): the same bytes as
/// [`resize_shorter_side`] then [`center_crop`], at a cost bounded by the source and the
/// crop, whatever the aspect ratio.
pub fn resize_shorter_side_and_crop(img: &RgbImage, size: usize, out_w: usize, out_h: usize) -> RgbImage {
    let (w, h) = shorter_side_size(img.width, img.height, size);
    if out_w > w || out_h > h {
        // The crop pads: the resize is no larger than the crop.
        return center_crop(&resize_bilinear_antialias(img, w, h), out_w, out_h);
    }
    let (left, top) = (half_round_even(w - out_w), half_round_even(h - out_h));
    resize_window(img, w, h, (left, top), (out_w, out_h))
}

/// The output size of torchvision's `Resize(size)` for an int `size`: the shorter side
/// becomes `size`, the longer `int(size * long / short)`; returns `(width, height)`.
pub fn shorter_side_size(width: usize, height: usize, size: usize) -> (usize, usize) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    if short == 0 {
        return (width, height);
    }
    // Python's `int(a * b / c)`: a correctly rounded float division, then truncation.
    let new_long = ((size * long) as f64 / short as f64) as usize;
    if width <= height {
        (size, new_long)
    } else {
        (new_long, size)
    }
}

/// torchvision's `Resize(size)` on a PIL image: the shorter side becomes `size`, with
/// the antialiased bilinear filter of [`resize_bilinear_antialias`].
pub fn resize_shorter_side(img: &RgbImage, size: usize) -> RgbImage {
    let (w, h) = shorter_side_size(img.width, img.height, size);
    resize_bilinear_antialias(img, w, h)
}

/// Python's `int(round(d / 2.0))` for a non-negative integer `d` (round half to even).
fn half_round_even(d: usize) -> usize {
    let q = d / 2;
    if d % 2 == 1 && q % 2 == 1 {
        q + 1
    } else {
        q
    }
}

/// torchvision's `CenterCrop((out_h, out_w))`: top = round((h - out_h) / 2), left likewise
/// (Python rounding, half to even); a crop larger than the image is zero-padded first
/// as torchvision does (left/top get `(crop - size) // 2`).
pub fn center_crop(img: &RgbImage, out_w: usize, out_h: usize) -> RgbImage {
    let mut data = vec![0u8; out_w * out_h * 3];
    // Offsets of the crop window in the source, possibly "negative" (padding).
    let (pad_l, left) = if out_w > img.width {
        ((out_w - img.width) / 2, 0)
    } else {
        (0, half_round_even(img.width - out_w))
    };
    let (pad_t, top) = if out_h > img.height {
        ((out_h - img.height) / 2, 0)
    } else {
        (0, half_round_even(img.height - out_h))
    };
    let copy_w = img.width.min(out_w);
    let copy_h = img.height.min(out_h);
    for y in 0..copy_h {
        let s = ((top + y) * img.width + left) * 3;
        let d = ((pad_t + y) * out_w + pad_l) * 3;
        data[d..d + copy_w * 3].copy_from_slice(&img.data[s..s + copy_w * 3]);
    }
    RgbImage {
        width: out_w,
        height: out_h,
        data,
    }
}

/// HWC RGB to planar CHW bytes (the layout of [`crate::data::Dataset`]).
pub fn to_chw_u8(img: &RgbImage) -> Vec<u8> {
    let n = img.width * img.height;
    let mut out = vec![0u8; 3 * n];
    for (i, px) in img.data.chunks_exact(3).enumerate() {
        out[i] = px[0];
        out[n + i] = px[1];
        out[2 * n + i] = px[2];
    }
    out
}

/// torchvision's `ToTensor` + `Normalize(mean, std)`: `(v / 255 - mean) / std` in f32,
/// planar CHW.
pub fn to_chw_f32(img: &RgbImage, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let n = img.width * img.height;
    let lut: Vec<[f32; 256]> = (0..3)
        .map(|c| {
            let mut t = [0f32; 256];
            for (v, e) in t.iter_mut().enumerate() {
                *e = (v as f32 / 255.0 - mean[c]) / std[c];
            }
            t
        })
        .collect();
    let mut out = vec![0f32; 3 * n];
    for (i, px) in img.data.chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * n + i] = lut[c][px[c] as usize];
        }
    }
    out
}

/// The standard evaluation preprocessing of ImageNet classifiers: `Resize(resize)`,
/// `CenterCrop(crop)`, `ToTensor`, `Normalize(mean, std)`; returns 3 x crop x crop f32.
pub fn classification_input(img: &RgbImage, resize: usize, crop: usize, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    let r = resize_shorter_side(img, resize);
    to_chw_f32(&center_crop(&r, crop, crop), mean, std)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::image::{codecs::png::PngEncoder, ExtendedColorType, ImageEncoder};

    fn png(data: &[u8], w: u32, h: u32, t: ExtendedColorType) -> Vec<u8> {
        let mut buf = Vec::new();
        PngEncoder::new(&mut buf).write_image(data, w, h, t).unwrap();
        buf
    }

    fn gradient(w: usize, h: usize) -> RgbImage {
        let data = (0..w * h * 3).map(|i| ((i * 37 + (i / 3) * 11) % 256) as u8).collect();
        RgbImage::new(w, h, data).unwrap()
    }

    #[test]
    fn resizing_only_the_crop_gives_the_same_bytes_at_a_bounded_cost() {
        let mut seed = 7u32;
        let mut byte = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            (seed >> 8) as u8
        };
        for (w, h, size, crop) in [
            (300, 200, 256, 224),
            (200, 300, 256, 224),
            (37, 500, 40, 32),
            (256, 256, 256, 224),
            (257, 256, 256, 224),
            (100, 80, 256, 224),
            (5, 3, 4, 4),
            (224, 1000, 256, 224),
        ] {
            let img = RgbImage::new(w, h, (0..w * h * 3).map(|_| byte()).collect()).unwrap();
            let whole = center_crop(&resize_shorter_side(&img, size), crop, crop);
            assert_eq!(resize_shorter_side_and_crop(&img, size, crop, crop), whole, "{w}x{h}");
        }
        // A 16384x1 strip: its whole resize would be 4194304x256 pixels (3.2 GB).
        let strip = RgbImage::new(16384, 1, (0..16384 * 3).map(|i| (i % 251) as u8).collect()).unwrap();
        let out = resize_shorter_side_and_crop(&strip, 256, 224, 224);
        assert_eq!((out.width, out.height), (224, 224));
    }

    #[test]
    fn decodes_png_variants() {
        let rgb = [10u8, 20, 30, 40, 50, 60];
        let d = decode_image(&png(&rgb, 2, 1, ExtendedColorType::Rgb8), "a.png").unwrap();
        assert_eq!((d.width, d.height, &d.data[..]), (2, 1, &rgb[..]));
        let rgba = [10u8, 20, 30, 0, 40, 50, 60, 128];
        let d = decode_image(&png(&rgba, 2, 1, ExtendedColorType::Rgba8), "a.png").unwrap();
        assert_eq!(d.data, rgb);
        let d = decode_image(&png(&[7, 200], 1, 2, ExtendedColorType::L8), "g.png").unwrap();
        assert_eq!(d.data, vec![7, 7, 7, 200, 200, 200]);
        let d = decode_image(&png(&[9, 0], 1, 1, ExtendedColorType::La8), "ga.png").unwrap();
        assert_eq!(d.data, vec![9, 9, 9]);
        // 16-bit RGB (big-endian samples in PNG; the encoder takes native u16 bytes).
        let px16: Vec<u8> = [0xffffu16, 0x8080, 0x0000]
            .iter()
            .flat_map(|v| v.to_ne_bytes())
            .collect();
        let d = decode_image(&png(&px16, 1, 1, ExtendedColorType::Rgb16), "16.png").unwrap();
        assert_eq!(d.data, vec![255, 128, 0]);
    }

    #[test]
    fn decodes_jpeg() {
        let img = gradient(16, 8);
        let mut buf = Vec::new();
        ::image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 95)
            .write_image(&img.data, 16, 8, ExtendedColorType::Rgb8)
            .unwrap();
        let d = decode_image(&buf, "x.jpg").unwrap();
        assert_eq!((d.width, d.height), (16, 8));
        let err: f64 = d
            .data
            .iter()
            .zip(&img.data)
            .map(|(&a, &b)| (a as f64 - b as f64).abs())
            .sum::<f64>()
            / d.data.len() as f64;
        assert!(err < 40.0, "mean abs error {err}");
        let e = decode_image(&buf[..buf.len() / 3], "cut.jpg");
        // A truncated JPEG is either an error naming the file or decodes partially.
        if let Err(e) = e {
            assert!(e.to_string().contains("cut.jpg"), "{e}");
        }
    }

    #[test]
    fn refuses_garbage_and_huge() {
        let e = decode_image(b"hello world", "junk.png").unwrap_err().to_string();
        assert!(e.contains("junk.png") && e.contains("not a JPEG or PNG"), "{e}");
        let mut p = png(&[0u8; 3], 1, 1, ExtendedColorType::Rgb8);
        let e = decode_image(&p[..20], "short.png").unwrap_err().to_string();
        assert!(e.contains("short.png"), "{e}");
        // Patch the IHDR to claim 20000 x 20000 (CRC left wrong: the size check comes first
        // or the CRC check fails; either way an error, never an allocation of 1.2 GB).
        p[16..20].copy_from_slice(&20000u32.to_be_bytes());
        p[20..24].copy_from_slice(&20000u32.to_be_bytes());
        let e = decode_image(&p, "huge.png").unwrap_err().to_string();
        assert!(e.contains("huge.png"), "{e}");
        let mut p = png(&[0u8; 3], 1, 1, ExtendedColorType::Rgb8);
        p[16..20].copy_from_slice(&20000u32.to_be_bytes());
        p[20..24].copy_from_slice(&20000u32.to_be_bytes());
        let crc = crc32(&p[12..29]);
        p[29..33].copy_from_slice(&crc.to_be_bytes());
        let e = decode_image(&p, "huge.png").unwrap_err().to_string();
        assert!(e.contains("20000x20000") && e.contains("limit"), "{e}");
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xffff_ffffu32;
        for &b in bytes {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xedb8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn rgba_conversion_checks_length() {
        let d = rgba_to_rgb(&[1, 2, 3, 4, 5, 6, 7, 8], 2, 1).unwrap();
        assert_eq!(d.data, vec![1, 2, 3, 5, 6, 7]);
        let e = rgba_to_rgb(&[1, 2, 3], 1, 1).unwrap_err().to_string();
        assert!(e.contains("needs 4 bytes, found 3"), "{e}");
        assert!(RgbImage::new(2, 2, vec![0; 11]).is_err());
    }

    fn grey_row(v: &[u8]) -> RgbImage {
        RgbImage::new(v.len(), 1, v.iter().flat_map(|&x| [x, x, x]).collect()).unwrap()
    }

    fn red(img: &RgbImage) -> Vec<u8> {
        img.data.iter().step_by(3).copied().collect()
    }

    #[test]
    fn resize_by_hand() {
        // 4 -> 2: support 2, weights (3/7, 3/7, 1/7) and (1/7, 3/7, 3/7).
        // (0*3 + 70*3 + 140) / 7 = 50, (70 + 140*3 + 210*3) / 7 = 160.
        let r = resize_bilinear_antialias(&grey_row(&[0, 70, 140, 210]), 2, 1);
        assert_eq!(red(&r), vec![50, 160]);
        // 2 -> 4 upscaling: plain linear interpolation, edge taps clamped: output centres
        // 0.25, 0.75, 1.25, 1.75 give 0, 0.25 * 100, 0.75 * 100, 100.
        let r = resize_bilinear_antialias(&grey_row(&[0, 100]), 4, 1);
        assert_eq!(red(&r), vec![0, 25, 75, 100]);
        // 3 -> 1: support 3 around 1.5, taps at distances 1, 0, 1 scaled by 1/3, weights
        // 2/3, 1, 2/3 normalised to 2/7, 3/7, 2/7: (0 * 2 + 30 * 3 + 90 * 2) / 7 = 38.6 -> 39.
        let r = resize_bilinear_antialias(&grey_row(&[0, 30, 90]), 1, 1);
        assert_eq!(red(&r), vec![39]); // Pillow agrees
                                       // vertical pass equals horizontal pass on the transpose
        let col = RgbImage::new(1, 4, grey_row(&[0, 70, 140, 210]).data).unwrap();
        let r = resize_bilinear_antialias(&col, 1, 2);
        assert_eq!(red(&r), vec![50, 160]);
    }

    #[test]
    fn resize_matches_pillow() {
        // Reference values from Pillow 13.0: Image.frombytes('L', (7, 1), bytes(row))
        // .resize((w, 1), Image.BILINEAR) for the row below.
        let row = [0u8, 255, 17, 200, 3, 99, 180];
        let cases: [(usize, &[u8]); 6] = [
            (3, &[113, 108, 107]),
            (5, &[85, 123, 131, 46, 153]),
            (2, &[114, 102]),
            (12, &[0, 96, 244, 126, 40, 147, 143, 28, 47, 102, 150, 180]),
            (1, &[108]),
            (7, &[0, 255, 17, 200, 3, 99, 180]),
        ];
        for (w, want) in cases {
            let r = resize_bilinear_antialias(&grey_row(&row), w, 1);
            assert_eq!(red(&r), want, "width {w}");
        }
        // 2-D RGB, 5x4 -> 3x7 (down horizontally, up vertically), from Pillow likewise.
        let src: Vec<u8> = vec![
            68, 32, 130, 60, 253, 230, 241, 194, 107, 48, 249, 14, 199, 221, 1, 228, 136, 117, 52, 162, 15, 11, 13, 4,
            195, 110, 216, 14, 113, 224, 253, 119, 176, 118, 112, 235, 148, 11, 213, 51, 95, 151, 61, 170, 216, 97,
            155, 145, 255, 201, 17, 245, 124, 206, 212, 88, 187, 191, 44, 224,
        ];
        let want: Vec<u8> = vec![
            65, 127, 173, 158, 219, 114, 134, 233, 7, 96, 134, 137, 123, 165, 93, 119, 190, 83, 147, 146, 80, 68, 79,
            58, 95, 121, 206, 174, 132, 137, 91, 60, 129, 75, 125, 205, 193, 120, 193, 129, 58, 201, 67, 133, 189, 176,
            154, 130, 197, 104, 176, 149, 90, 201, 165, 175, 90, 240, 133, 160, 200, 63, 208,
        ];
        let r = resize_bilinear_antialias(&RgbImage::new(5, 4, src).unwrap(), 3, 7);
        assert_eq!(r.data, want);
    }

    #[test]
    fn resize_identity_and_odd_sizes() {
        let g = gradient(5, 3);
        assert_eq!(resize_bilinear_antialias(&g, 5, 3), g);
        let one = RgbImage::new(1, 1, vec![9, 8, 7]).unwrap();
        let big = resize_bilinear_antialias(&one, 4, 3);
        assert_eq!(big.data, [9u8, 8, 7].repeat(12));
        let tall = gradient(3, 1000);
        let s = resize_bilinear_antialias(&tall, 1, 10);
        assert_eq!((s.width, s.height, s.data.len()), (1, 10, 30));
        let flat = RgbImage::new(3, 1000, vec![77; 9000]).unwrap();
        let s = resize_bilinear_antialias(&flat, 7, 13);
        assert!(s.data.iter().all(|&v| v == 77));
        assert_eq!(resize_bilinear_antialias(&one, 0, 3).data.len(), 0);
    }

    #[test]
    fn shorter_side_follows_torchvision() {
        assert_eq!(shorter_side_size(500, 375, 256), (341, 256)); // int(256*500/375)=341
        assert_eq!(shorter_side_size(375, 500, 256), (256, 341));
        assert_eq!(shorter_side_size(3, 1000, 256), (256, 85333));
        assert_eq!(shorter_side_size(1, 1, 256), (256, 256));
        assert_eq!(shorter_side_size(640, 480, 256), (341, 256));
        let r = resize_shorter_side(&gradient(10, 4), 2);
        assert_eq!((r.width, r.height), (5, 2));
    }

    #[test]
    fn center_crop_rounding_and_padding() {
        let g = gradient(7, 6);
        // width 7 -> 4: (7-4)/2 = 1.5 -> 2; height 6 -> 3: 1.5 -> 2.
        let c = center_crop(&g, 4, 3);
        assert_eq!(c.pixel(0, 0), g.pixel(2, 2));
        assert_eq!(c.pixel(3, 2), g.pixel(5, 4));
        // Python rounds half to even: 5.5 -> 6, 2.5 -> 2.
        assert_eq!(half_round_even(11), 6);
        assert_eq!(half_round_even(5), 2);
        assert_eq!(half_round_even(32), 16);
        let c = center_crop(&g, 2, 6);
        assert_eq!(c.pixel(0, 0), g.pixel(2, 0)); // (7-2)/2 = 2.5 -> 2
                                                  // larger crop pads with zeros: 7 -> 10 puts 1 column left, 2 right.
        let c = center_crop(&g, 10, 6);
        assert_eq!(c.pixel(0, 0), [0, 0, 0]);
        assert_eq!(c.pixel(1, 0), g.pixel(0, 0));
        assert_eq!(c.pixel(7, 5), g.pixel(6, 5));
        assert_eq!(c.pixel(9, 5), [0, 0, 0]);
        assert_eq!(center_crop(&g, 7, 6), g);
    }

    #[test]
    fn chw_conversions() {
        let img = RgbImage::new(2, 1, vec![0, 51, 255, 255, 102, 0]).unwrap();
        assert_eq!(to_chw_u8(&img), vec![0, 255, 51, 102, 255, 0]);
        let f = to_chw_f32(&img, [0.5, 0.0, 0.0], [0.5, 1.0, 2.0]);
        assert_eq!(f, vec![-1.0, 1.0, 0.2, 0.4, 0.5, 0.0]);
        let x = classification_input(&gradient(300, 200), 256, 224, IMAGENET_MEAN, IMAGENET_STD);
        assert_eq!(x.len(), 3 * 224 * 224);
    }
}
