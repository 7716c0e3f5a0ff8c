//! Images in, tensors out (feature `vision`): decode JPEG or PNG, resize, center-crop and
//! normalize into the NCHW `f32` tensor most vision models take.
//!
//! ```no_run
//! use corral_guest::vision::{IMAGENET, image_tensor};
//! use corral_guest::Model;
//!
//! # fn classify(jpeg: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
//! let input = image_tensor(jpeg, &IMAGENET)?; // f32 [1, 3, 224, 224]
//! let outputs = Model::load("classifier")?.run([("input", input)])?;
//! # Ok(()) }
//! ```

use std::io::Cursor;

use crate::Tensor;

/// How to turn an image into a tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Preprocess {
    /// Resize to this many pixels square first (aspect ratio not kept).
    pub resize: u32,
    /// Then cut this many pixels square out of the center.
    pub crop: u32,
    /// Per-channel (RGB) mean subtracted after scaling pixels to 0..1.
    pub mean: [f32; 3],
    /// Per-channel (RGB) standard deviation divided by after that.
    pub std: [f32; 3],
    /// Images wider or taller than this are refused before decoding.
    pub max_side: u32,
}

/// The ImageNet convention: 256 → 224 center crop, ImageNet mean and deviation.
pub const IMAGENET: Preprocess = Preprocess {
    resize: 256,
    crop: 224,
    mean: [0.485, 0.456, 0.406],
    std: [0.229, 0.224, 0.225],
    max_side: 8192,
};

/// A class a classifier ranked: its index in the model's output, its label and its
/// probability (softmax of the logits).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Prediction {
    /// The class's index in the model's output.
    pub index: usize,
    /// Its label (empty when there are fewer labels than classes).
    pub label: String,
    /// Its probability, the softmax of the logits.
    pub probability: f32,
}

/// The `k` most likely classes of `logits`, most likely first, labelled from `labels` (one
/// per class, in the model's order).
pub fn top_k<S: AsRef<str>>(logits: &[f32], k: usize, labels: &[S]) -> Vec<Prediction> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    let mut ranked: Vec<(usize, f32)> = exps.iter().map(|&e| e / sum).enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    ranked
        .into_iter()
        .take(k)
        .map(|(index, probability)| Prediction {
            index,
            label: labels
                .get(index)
                .map(|l| short_label(l.as_ref()))
                .unwrap_or_default(),
            probability,
        })
        .collect()
}

/// A label as people read it: ImageNet's `n02099601 golden retriever` → `golden retriever`,
/// `n02123045 tabby, tabby cat` → `tabby`; a plain label stays as it is.
pub fn short_label(line: &str) -> String {
    let name = match line.split_once(' ') {
        Some((id, rest)) if id.starts_with('n') && id[1..].bytes().all(|b| b.is_ascii_digit()) => {
            rest
        }
        _ => line,
    };
    name.split(',').next().unwrap_or(name).trim().to_owned()
}

/// Decodes a JPEG or PNG and returns an `f32` tensor `[1, 3, crop, crop]`. Errors are
/// messages a client can act on ("not a JPEG or PNG image", "cannot decode ...").
pub fn image_tensor(bytes: &[u8], how: &Preprocess) -> Result<Tensor, String> {
    let pixels = image_pixels(bytes, how)?;
    Ok(Tensor::f32(&[1, 3, how.crop, how.crop], &pixels))
}

/// [`image_tensor`]'s data without making the tensor: NCHW `f32`, `3 × crop × crop` values.
pub fn image_pixels(bytes: &[u8], how: &Preprocess) -> Result<Vec<f32>, String> {
    if how.crop > how.resize {
        return Err(format!(
            "crop {} is larger than resize {}",
            how.crop, how.resize
        ));
    }
    if bytes.is_empty() {
        return Err("the image is empty; send a JPEG or PNG image".into());
    }
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("cannot read the image: {e}"))?;
    match reader.format() {
        Some(image::ImageFormat::Jpeg) => {
            if let Some((rgb, width, height)) = decode_reduced(bytes, how) {
                return Ok(resize_crop_normalize(&rgb, width, height, how));
            }
        }
        Some(image::ImageFormat::Png) => {}
        _ => return Err("this is not a JPEG or PNG image".into()),
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(how.max_side);
    limits.max_image_height = Some(how.max_side);
    reader.limits(limits);
    let image = reader
        .decode()
        .map_err(|e| format!("cannot decode the image: {e}"))?;
    let image = image.into_rgb8();
    Ok(resize_crop_normalize(
        image.as_raw(),
        image.width(),
        image.height(),
        how,
    ))
}

/// A large JPEG decoded at a reduced DCT scale (1/2, 1/4 or 1/8, as libjpeg and Pillow's
/// `draft` mode do): the smallest that keeps its short side at least 1.4 × `resize`, so that
/// most of the decoding work and of the resize's input go while the triangle filter still
/// averages over more than one decoded pixel per output pixel, as it does from the full image.
/// (Measured against the Python server's answers: a 1920×1080 photo decoded at 1/4, 270 pixels
/// for 256, moved a probability by 0.08; at 1/2, and a 1280×720 one at 1/2, stay within the
/// tolerance.) RGB pixels and their size; `None` for a JPEG too small to reduce, neither RGB
/// nor grayscale, or that this decoder cannot read: the full decoder then takes it (and names
/// what is wrong with it, if anything is).
fn decode_reduced(bytes: &[u8], how: &Preprocess) -> Option<(Vec<u8>, u32, u32)> {
    let mut decoder = jpeg_decoder::Decoder::new(bytes);
    decoder.read_info().ok()?;
    let info = decoder.info()?;
    let (width, height) = (u32::from(info.width), u32::from(info.height));
    let short = width.min(height);
    let least = how.resize.saturating_mul(7).div_ceil(5);
    if short < least.saturating_mul(2) || width > how.max_side || height > how.max_side {
        return None; // The full decoder, which also refuses what is over the limit.
    }
    let gray = match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => false,
        jpeg_decoder::PixelFormat::L8 => true,
        _ => return None,
    };
    // The same factor on both sides: ask for the short side at `least` and the long side in
    // proportion (the decoder takes a scale that reaches either).
    let wanted = |side: u32| {
        u16::try_from((u64::from(side) * u64::from(least)).div_ceil(u64::from(short)))
            .unwrap_or(u16::MAX)
    };
    let (scaled_width, scaled_height) = decoder.scale(wanted(width), wanted(height)).ok()?;
    let (scaled_width, scaled_height) = (u32::from(scaled_width), u32::from(scaled_height));
    let len = (scaled_width * scaled_height * 3) as usize;
    decoder.set_max_decoding_buffer_size(len);
    let pixels = decoder.decode().ok()?;
    let rgb: Vec<u8> = if gray {
        pixels.iter().flat_map(|&v| [v, v, v]).collect()
    } else {
        pixels
    };
    (rgb.len() == len).then_some((rgb, scaled_width, scaled_height))
}

/// One axis of a resize with the `image` crate's Triangle filter
/// (`image::imageops::resize(.., FilterType::Triangle)`), for the output indices in `range`:
/// for each, the first input index it reads and its weights, computed exactly as that crate
/// does, in rows of `taps` (the most any output index has; the rest of a row is zeros).
struct Axis {
    starts: Vec<usize>,
    /// Weights actually used per output index (the rest of its row is padding).
    lens: Vec<usize>,
    weights: Vec<f32>,
    taps: usize,
}

impl Axis {
    fn triangle(input: u32, output: u32, range: std::ops::Range<usize>) -> Self {
        let ratio = input as f32 / output as f32;
        let scale = if ratio < 1.0 { 1.0 } else { ratio };
        let support = scale; // The triangle's support is 1.0, scaled when shrinking.
        let span = |out: usize| {
            let center = (out as f32 + 0.5) * ratio;
            let left = ((center - support).floor() as i64).clamp(0, i64::from(input) - 1);
            let right = ((center + support).ceil() as i64).clamp(left + 1, i64::from(input));
            (center - 0.5, left, right)
        };
        let taps = range
            .clone()
            .map(|out| {
                let (_, left, right) = span(out);
                (right - left) as usize
            })
            .max()
            .unwrap_or(1);
        let mut axis = Self {
            starts: Vec::with_capacity(range.len()),
            lens: Vec::with_capacity(range.len()),
            weights: vec![0.0; range.len() * taps],
            taps,
        };
        for (k, out) in range.enumerate() {
            let (center, left, right) = span(out);
            let row = &mut axis.weights[k * taps..][..(right - left) as usize];
            for (w, i) in row.iter_mut().zip(left..right) {
                let x = ((i as f32 - center) / scale).abs();
                *w = if x < 1.0 { 1.0 - x } else { 0.0 };
            }
            let mut sum = 0.0;
            for w in row.iter() {
                sum += w;
            }
            for w in row.iter_mut() {
                *w /= sum;
            }
            axis.starts.push(left as usize);
            axis.lens.push((right - left) as usize);
        }
        axis
    }

    /// The start and the (padded) weights of the `k`th output index.
    fn get(&self, k: usize) -> (usize, &[f32]) {
        (self.starts[k], &self.weights[k * self.taps..][..self.taps])
    }
}

/// Resizes packed RGB8 pixels to `resize`², cuts the center `crop`² out and normalizes it into
/// NCHW `f32`s. The values are those of the `image` crate's Triangle resize (vertical pass to
/// `f32`, horizontal pass rounded to `u8`) followed by a crop and the normalization, except that
/// a value exactly halfway between two levels rounds to even, not up; but only the cropped
/// rows and columns are computed, one output row at a time through a buffer of one row (so the
/// intermediate image is never held), each pixel's channels together in four lanes that
/// WebAssembly SIMD computes at once. Kept out of line so that profiles of a guest name it.
#[inline(never)]
fn resize_crop_normalize(rgb: &[u8], width: u32, height: u32, how: &Preprocess) -> Vec<f32> {
    let offset = ((how.resize - how.crop) / 2) as usize;
    let crop = how.crop as usize;
    let (w, plane) = (width as usize, crop * crop);
    let rows = Axis::triangle(height, how.resize, offset..offset + crop);
    let columns = Axis::triangle(width, how.resize, offset..offset + crop);
    // Normalization as one multiply and add per value: (v / 255 - mean) / std.
    let mut scale = [0f32; 4];
    let mut shift = [0f32; 4];
    for c in 0..3 {
        scale[c] = 1.0 / (255.0 * how.std[c]);
        shift[c] = -how.mean[c] / how.std[c];
    }
    let mut pixels = vec![0f32; 3 * plane];
    // One output row after the vertical pass: every input column, RGB as f32, then padding
    // so that the horizontal pass can read `taps` whole pixels plus one value past any start.
    let mut row = vec![0f32; (w + columns.taps) * 3 + 1];
    for y in 0..crop {
        // Vertical pass, in the image crate's order: the row's taps, top to bottom.
        let tall = &mut row[..w * 3];
        tall.fill(0.0);
        let top = rows.starts[y];
        for (i, &weight) in rows.weights[y * rows.taps..][..rows.lens[y]]
            .iter()
            .enumerate()
        {
            let source = &rgb[(top + i) * w * 3..][..w * 3];
            for (t, &v) in tall.iter_mut().zip(source) {
                *t += f32::from(v) * weight;
            }
        }
        // Horizontal pass on the cropped columns: one pixel's three values (and one spare
        // lane) at a time, padded taps adding exact zeros; then rounded and normalized into
        // the channel planes.
        for x in 0..crop {
            let (left, weights) = columns.get(x);
            let window = &row[left * 3..][..weights.len() * 3 + 1];
            let mut t = [0f32; 4];
            for (i, &weight) in weights.iter().enumerate() {
                let p: &[f32; 4] = window[i * 3..i * 3 + 4].try_into().expect("four values");
                for c in 0..4 {
                    t[c] += p[c] * weight;
                }
            }
            // Rounded to a byte's value as the image crate stores it (ties to even, one
            // WebAssembly instruction, where the image crate rounds them away from zero: a
            // value exactly halfway may come out one level lower), then normalized.
            let mut v = [0f32; 4];
            for c in 0..4 {
                v[c] = t[c].clamp(0.0, 255.0).round_ties_even() * scale[c] + shift[c];
            }
            for c in 0..3 {
                pixels[c * plane + y * crop + x] = v[c];
            }
        }
    }
    pixels
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The straightforward pipeline: the image crate's resize, crop, then normalization.
    fn reference(rgb: &image::RgbImage, how: &Preprocess) -> Vec<f32> {
        let resized = image::imageops::resize(
            rgb,
            how.resize,
            how.resize,
            image::imageops::FilterType::Triangle,
        );
        let offset = (how.resize - how.crop) / 2;
        let cropped =
            image::imageops::crop_imm(&resized, offset, offset, how.crop, how.crop).to_image();
        let plane = (how.crop * how.crop) as usize;
        let mut pixels = vec![0f32; 3 * plane];
        for (i, pixel) in cropped.pixels().enumerate() {
            for c in 0..3 {
                pixels[c * plane + i] = (f32::from(pixel[c]) / 255.0 - how.mean[c]) / how.std[c];
            }
        }
        pixels
    }

    #[test]
    fn classes_are_ranked_by_probability_and_labelled() {
        let labels = ["n01 cat", "n02099601 golden retriever", "plain, more"];
        let ranked = top_k(&[1.0, 3.0, 2.0], 2, &labels);
        assert_eq!(
            ranked
                .iter()
                .map(|p| (p.index, p.label.as_str()))
                .collect::<Vec<_>>(),
            [(1, "golden retriever"), (2, "plain")]
        );
        let total: f32 = top_k(&[1.0, 3.0, 2.0], 3, &labels)
            .iter()
            .map(|p| p.probability)
            .sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert_eq!(
            top_k(&[0.0; 4], 4, &labels)[3].label,
            "",
            "more classes than labels"
        );
    }

    fn jpeg(width: u32, height: u32) -> Vec<u8> {
        let rgb = image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(x / 4) as u8, (y / 3) as u8, ((x + y) / 8) as u8])
        });
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .encode_image(&rgb)
            .unwrap();
        out
    }

    #[test]
    fn large_jpegs_decode_at_a_reduced_scale_and_others_fall_back_to_the_full_decoder() {
        // 1/2 keeps 540 on the short side (at least 359), 1/4 would keep 270.
        let (_, width, height) = decode_reduced(&jpeg(1920, 1080), &IMAGENET).unwrap();
        assert_eq!((width, height), (960, 540));
        assert!(
            decode_reduced(&jpeg(1280, 700), &IMAGENET).is_none(),
            "too small to halve"
        );
        // One this decoder cannot read goes to the full decoder, as before it existed (which
        // fills in a JPEG cut short, and names what is wrong with one it cannot read).
        let mut cut = jpeg(1920, 1080);
        cut.truncate(cut.len() / 3);
        assert!(decode_reduced(&cut, &IMAGENET).is_none());
        let pixels = image_pixels(&cut, &IMAGENET).map(|p| p.len());
        assert_eq!(pixels, Ok(3 * 224 * 224));
        let mut broken = jpeg(1920, 1080);
        broken.truncate(200);
        let error = image_pixels(&broken, &IMAGENET)
            .map(|p| p.len())
            .unwrap_err();
        assert!(error.starts_with("cannot decode the image"), "{error}");
        // One over the side limit is refused before either decoder decodes it.
        let small_limit = Preprocess {
            max_side: 1000,
            ..IMAGENET
        };
        assert!(decode_reduced(&jpeg(1920, 1080), &small_limit).is_none());
        let error = image_pixels(&jpeg(1920, 1080), &small_limit)
            .map(|p| p.len())
            .unwrap_err();
        assert!(error.starts_with("cannot decode the image"), "{error}");
        // Either way the tensor has the crop's size.
        let pixels = image_pixels(&jpeg(1920, 1080), &IMAGENET).map(|p| p.len());
        assert_eq!(pixels, Ok(3 * 224 * 224));
    }

    #[test]
    fn the_fast_path_matches_the_image_crates_resize_and_crop() {
        let mut seed = 12345u32;
        for (width, height) in [(224, 224), (640, 480), (300, 900), (256, 256), (31, 17)] {
            let rgb = image::RgbImage::from_fn(width, height, |x, y| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let noise = (seed >> 16) as u8;
                image::Rgb([(x * 7) as u8 ^ noise, (y * 5) as u8, noise])
            });
            for how in [
                IMAGENET,
                Preprocess {
                    resize: 64,
                    crop: 48,
                    ..IMAGENET
                },
            ] {
                let fast = resize_crop_normalize(rgb.as_raw(), width, height, &how);
                let slow = reference(&rgb, &how);
                assert_eq!(fast.len(), slow.len());
                // Equal but for float rounding in the normalization, and one level lower
                // where the resize lands exactly halfway (ties to even), which is rare.
                let level = 1.0 / (255.0 * how.std[0].min(how.std[1]).min(how.std[2]));
                let mut ties = 0;
                for (i, (a, b)) in fast.iter().zip(&slow).enumerate() {
                    let difference = (a - b).abs();
                    if difference > 1e-5 {
                        assert!(
                            difference <= level + 1e-5,
                            "{width}x{height} -> {}: value {i} is {a}, not {b}",
                            how.resize
                        );
                        ties += 1;
                    }
                }
                assert!(
                    ties * 100 <= fast.len(),
                    "{width}x{height} -> {}: {ties} of {} values a level off",
                    how.resize,
                    fast.len()
                );
            }
        }
    }
}
