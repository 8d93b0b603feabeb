//! Weight files with their metadata (`config`, `classes`, `normalization`): loading a
//! classifier must check every size it declares before allocating, and whatever loads
//! must preprocess an image and write itself back.
#![no_main]
use libfuzzer_sys::fuzz_target;
use resnet_core::classifier::{Classifier, LoadOptions};
use resnet_core::data::image::RgbImage;

fuzz_target!(|data: &[u8]| {
    let Ok(c) = Classifier::load(data, &LoadOptions::default()) else {
        return;
    };
    let img = RgbImage::new(3, 2, vec![7; 18]).expect("valid image");
    if let Ok(x) = c.preprocess(&img) {
        assert!(x.iter().all(|v| v.is_finite()), "preprocessing gave non-finite inputs");
    }
    let _ = c.to_safetensors();
});
