//! Real trained weights on real data: the CIFAR-10 ResNet-20 and ResNet-32 checkpoints of
//! a public PyTorch re-implementation (legacy torch.save format, `module.` prefixes,
//! option-A shortcuts, `linear` classifier) on the JPEG copy of the CIFAR-10 test set.
//! An independent implementation decoding with libjpeg-turbo scores 81.03 % and 82.56 %;
//! our decoder (the `image` crate's) differs slightly, so the check allows 0.5 points.

mod common;

use common::shared::shared_dir;
use resnet_core::classifier::{Classifier, LoadOptions};
use resnet_core::data::cifar::Split;
use resnet_core::data::open::open_dataset;

fn accuracy_of(weights: &str, expected: f64) {
    let Some(shared) = shared_dir() else { return };
    let bytes = std::fs::read(shared.join("pretrained/cifar10-akamaster").join(weights)).unwrap();
    let mut model = Classifier::load(&bytes, &LoadOptions::default()).unwrap();
    assert_eq!(model.config().shortcut, resnet_core::model::ShortcutOption::A);
    let data = open_dataset(&shared.join("data/cifar10-jpeg"), Split::Test, &|_, _| {}).unwrap();
    assert_eq!(data.len(), 10_000);
    assert_eq!(model.classes, data.classes);
    let eval = model.evaluate(&data, 200, &mut |_, _| {}).unwrap();
    let acc = 100.0 * eval.top1 as f64 / eval.total as f64;
    println!("{weights}: top-1 {acc:.2} % (independent implementation: {expected:.2} %)");
    assert!((acc - expected).abs() < 0.5, "{weights}: {acc:.2} % vs {expected:.2} %");

    // Converting to our safetensors and back changes nothing.
    let saved = model.to_safetensors().unwrap();
    let mut again = Classifier::load(&saved, &LoadOptions::default()).unwrap();
    let few = data.subset(&(0..50).collect::<Vec<_>>()).unwrap();
    let a = model.evaluate(&few, 50, &mut |_, _| {}).unwrap();
    let b = again.evaluate(&few, 50, &mut |_, _| {}).unwrap();
    assert_eq!(a, b);
}

#[test]
fn akamaster_resnet20_matches_the_reference_accuracy() {
    accuracy_of("resnet20-12fca82f.th", 81.03);
}

#[test]
fn akamaster_resnet32_matches_the_reference_accuracy() {
    accuracy_of("resnet32-d509ac18.th", 82.56);
}
