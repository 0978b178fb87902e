//! The MNIST classifier: the shipped weights classify the test digits, bad weight files are errors naming the file,
//! and inference on the GPU backend (the emulator here; a device with `--ignored`) agrees with the CPU.

mod common;

use common::{assert_close, repo_path};
use ddpm::backend::Gpu;
use ddpm::data::{load_dataset, Split};
use ddpm::gpu::{cuda::Cuda, emu::Emulator, Executor};
use ddpm::nn::{Classifier, CLASSES, DEFAULT_WEIGHTS, FEATURE_DIM};
use ddpm::tensor_file::{read_tensors, write_tensors};
use ddpm::Tensor;

/// The first `n` test images (`[n, 1, 32, 32]`) and their labels.
fn test_digits(n: usize) -> (Tensor, Vec<u8>) {
    let test = load_dataset(&repo_path("data/mnist"), Split::Test).unwrap();
    let per = test.images.numel() / test.labels.len();
    (Tensor::new(&[n, 1, 32, 32], test.images.data()[..n * per].to_vec()).unwrap(), test.labels[..n].to_vec())
}

#[test]
fn shipped_weights_classify_the_first_2000_test_digits() {
    let (model, params) = Classifier::load(&repo_path(DEFAULT_WEIGHTS)).unwrap();
    let (images, labels) = test_digits(2000);
    let emb = model.embed(&params, &images, 500).unwrap();
    assert_eq!(
        (emb.n, emb.dim, emb.features.len(), emb.probs.len()),
        (2000, FEATURE_DIM, 2000 * FEATURE_DIM, 2000 * CLASSES)
    );
    assert!(emb.features.iter().all(|&f| f >= 0.0), "features are taken after a ReLU");
    for row in emb.probs.chunks(CLASSES) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5, "probabilities sum to 1: {row:?}");
    }
    let accuracy = emb.accuracy(&labels).unwrap();
    eprintln!("accuracy on the first 2000 test digits: {:.2}%", 100.0 * accuracy);
    assert!(accuracy >= 0.985, "accuracy {accuracy}");
}

#[test]
fn bad_weight_files_are_errors_naming_the_file() {
    let dir = std::env::temp_dir().join(format!("ddpm-classifier-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shipped = repo_path(DEFAULT_WEIGHTS);
    let load_err = |path: &std::path::Path| Classifier::load(path).map(|_| ()).unwrap_err().to_string();
    let missing = dir.join("missing.safetensors");
    assert!(load_err(&missing).contains("missing.safetensors"));
    let bytes = std::fs::read(&shipped).unwrap();
    let truncated = dir.join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_err(&truncated);
    assert!(err.contains("truncated.safetensors") && err.contains("not a valid safetensors file"), "{err}");
    // A mis-shaped and then a missing tensor: each error names the file and the tensor.
    let mut tensors = read_tensors(&shipped).unwrap().f32_with_prefix("");
    tensors.insert("fc2.bias".into(), Tensor::zeros(&[9]));
    let write = |tensors: &std::collections::HashMap<String, Tensor>, name: &str| {
        let path = dir.join(name);
        write_tensors(&path, &tensors.iter().map(|(n, t)| (n.clone(), t)).collect::<Vec<_>>(), None).unwrap();
        path
    };
    let err = load_err(&write(&tensors, "shape.safetensors"));
    assert!(err.contains("shape.safetensors") && err.contains("fc2.bias") && err.contains("[9]"), "{err}");
    tensors.remove("fc2.bias");
    let err = load_err(&write(&tensors, "partial.safetensors"));
    assert!(err.contains("partial.safetensors") && err.contains("missing tensor `fc2.bias`"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn save_then_load_gives_the_same_tensors() {
    let (model, params) = Classifier::load(&repo_path(DEFAULT_WEIGHTS)).unwrap();
    let path = std::env::temp_dir().join(format!("ddpm-classifier-roundtrip-{}.safetensors", std::process::id()));
    model.save(&params, &path).unwrap();
    let (_, again) = Classifier::load(&path).unwrap();
    assert!(params.iter().zip(again.iter()).all(|((n, a), (m, b))| n == m && a == b));
    std::fs::remove_file(&path).ok();
}

/// Features and probabilities of 8 test digits on the GPU backend against the CPU's. The GPU's GEMMs sum in
/// another order (f32, k up to 2048 for fc1), so rel 1e-4 plus abs 1e-4 for features and probabilities near 0.
fn embed_matches_cpu<E: Executor>(exec: E) {
    let (model, params) = Classifier::load(&repo_path(DEFAULT_WEIGHTS)).unwrap();
    let (images, _) = test_digits(8);
    let cpu = model.embed(&params, &images, 8).unwrap();
    let gpu = model.embed(&params.to_backend(&Gpu::new(exec)).unwrap(), &images, 3).unwrap();
    assert_close("features", &gpu.features, &cpu.features, 1e-4, 1e-4);
    assert_close("probs", &gpu.probs, &cpu.probs, 1e-4, 1e-4);
}

#[test]
fn embed_on_the_emulator_matches_cpu() {
    embed_matches_cpu(Emulator::new());
}

#[test]
#[ignore = "needs a CUDA device: run with --ignored on a GPU machine"]
fn embed_on_cuda_matches_cpu() {
    embed_matches_cpu(Cuda::new(0).unwrap_or_else(|why| panic!("no CUDA device: {why}")));
}
