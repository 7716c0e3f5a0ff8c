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

use image::imageops::FilterType;

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
        Some(image::ImageFormat::Jpeg | image::ImageFormat::Png) => {}
        _ => return Err("this is not a JPEG or PNG image".into()),
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(how.max_side);
    limits.max_image_height = Some(how.max_side);
    reader.limits(limits);
    let image = reader
        .decode()
        .map_err(|e| format!("cannot decode the image: {e}"))?;
    let resized = image::imageops::resize(
        &image.to_rgb8(),
        how.resize,
        how.resize,
        FilterType::Triangle,
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
    Ok(pixels)
}
