//! Image decoding (JPEG, PNG) with its size limits, then the CIFAR and ImageNet resizes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use resnet_core::data::image::{decode_image, resize_bilinear_antialias, resize_shorter_side_and_crop};

fuzz_target!(|data: &[u8]| {
    if let Ok(img) = decode_image(data, "fuzz") {
        let small = resize_bilinear_antialias(&img, 32, 32);
        assert_eq!(small.data.len(), 32 * 32 * 3);
        let crop = resize_shorter_side_and_crop(&img, 256, 224, 224);
        assert_eq!(crop.data.len(), 224 * 224 * 3);
    }
});
