//! Perceiver IO (masked language model) and Perceiver (image classifier): agreement with the
//! perceiver-io reference dumps (copied from ../shared/fixtures), a finite-difference check of
//! every parameter of small models of both, and failures, not partial comparisons, when a
//! reference's shapes differ from the model's.

use std::path::PathBuf;

use autograd::{GradCheck, Tape};
use nn::loss::{cross_entropy, CrossEntropy};
use nn::Ctx;
use perceiver::perceiver_io::{
    library, AttentionConfig, InputConfig, ModelInput, OutputConfig, PerceiverIo, PerceiverIoConfig,
};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tensor::Tensor;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
}

#[test]
fn agrees_with_the_library_on_both_dumps() {
    for name in ["perceiver-io-mlm", "perceiver-image"] {
        let report = perceiver::verify::verify_dump(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        println!("{name}:\n{report}");
        assert!(report.passed(), "{name}:\n{report}");
        assert!(report.logits.max_abs_error < 1e-5 && report.loss.max_abs_error < 1e-5, "{name}");
        // One comparison per parameter tensor, each with a reference gradient.
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture(name).join("config.json")).unwrap()).unwrap();
        let model = PerceiverIo::new(library::config_from_library(&config["config"]).unwrap(), 0).unwrap();
        assert_eq!(report.grads.len(), model.params.len(), "{name}: every parameter's gradient is compared");
    }
}

/// A reference whose logits have another shape fails as a whole.
#[test]
fn a_misshapen_reference_fails() {
    let dir = std::env::temp_dir().join(format!("perceiver-io-misshapen-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture("perceiver-image").join(f), dir.join(f)).unwrap();
    }
    // The case with its logits cut to [3, 9].
    let case =
        nn::checkpoint::read_safetensors(&fixture("perceiver-image").join("case.safetensors")).unwrap();
    let mut named: Vec<(String, Tensor)> = case.floats.into_iter().collect();
    for (name, t) in &mut named {
        if name == "logits" {
            *t = t.narrow(1, 0, 9).unwrap().contiguous().unwrap();
        }
    }
    let mut file = nn::checkpoint::TensorFile { path: dir.join("case.safetensors"), ..Default::default() };
    file.floats = named.into_iter().collect();
    file.ints = case.ints;
    nn::checkpoint::write_tensor_file(&file.path, &file).unwrap();
    let report = perceiver::verify::verify_dump(&dir).unwrap();
    assert!(!report.passed() && !report.logits.passed(), "{report}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn small(image: bool) -> PerceiverIoConfig {
    let attention = |heads, qk, v| AttentionConfig { heads, qk, v, widening: 2 };
    PerceiverIoConfig {
        input: if image {
            InputConfig::Image { shape: [3, 2, 2], bands: 2 }
        } else {
            InputConfig::Tokens { vocab_size: 7, max_seq_len: 6, channels: 8 }
        },
        latents: 3,
        latent_channels: 8,
        cross: attention(2, Some(6), Some(4)),
        cross_layers: 2,
        first_cross_shared: image,
        self_attention: attention(2, None, None),
        self_layers_per_block: 1,
        self_blocks: 2,
        first_block_shared: !image,
        decoder: attention(1, None, None),
        decoder_residual: !image,
        output_queries: if image { 1 } else { 6 },
        output_query_channels: if image { 4 } else { 8 },
        output: if image { OutputConfig::Classes { classes: 3 } } else { OutputConfig::TiedTokens },
        dropout: 0.0,
        init_scale: 0.25,
    }
}

/// Finite differences on every parameter element of small models of both kinds (shared and
/// separate later layers, separate query/key and value widths, key padding, a decoder with and
/// without its residual).
#[test]
fn finite_differences_on_every_parameter() {
    for image in [false, true] {
        let model = PerceiverIo::new(small(image), 3).unwrap();
        let images = Tensor::randn(&[2, 3, 2, 2], 1.0, &mut ChaCha8Rng::seed_from_u64(9));
        let ids = [1, 4, 2, 6, 0, 3, 5, 5, 1, 2];
        let padding = [false, false, false, false, false, false, false, false, true, true];
        let targets: Vec<usize> =
            if image { vec![2, 0] } else { vec![2, 6, 0, 2, 3, 4, 1, 0, usize::MAX, usize::MAX] };
        let check = GradCheck { eps: 5e-3, atol: 2e-3, rtol: 2e-2, seed: 1 };
        let report = tests::check_every_parameter(&model.params, &check, |ctx| {
            let input = match image {
                true => ModelInput::Image(&images),
                false => ModelInput::Tokens { ids: &ids, batch: 2, len: 5, padding: Some(&padding) },
            };
            let logits = model.forward(ctx, &input)?;
            let opts = CrossEntropy { ignore_index: Some(usize::MAX), z_loss: 0.0 };
            Ok(cross_entropy(&logits, &targets, opts)?)
        })
        .unwrap_or_else(|e| panic!("image={image}: {e}"));
        assert_eq!(report.checked, model.params.numel(), "image={image}");
    }
}

/// Inputs that do not fit the model are errors naming what is wrong.
#[test]
fn bad_inputs_are_refused() {
    let model = PerceiverIo::new(small(false), 1).unwrap();
    let tape = Tape::inference();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let ctx = Ctx::new(&tape, &model.params, false, &mut rng);
    let too_long = [0usize; 14];
    let err =
        |input: ModelInput| model.forward(&ctx, &input).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err(ModelInput::Tokens { ids: &too_long, batch: 2, len: 7, padding: None }).contains("at most 6"));
    assert!(err(ModelInput::Tokens { ids: &too_long[..5], batch: 2, len: 3, padding: None })
        .contains("batch of 2 x 3"));
    let images = Tensor::zeros(&[1, 3, 2, 2]);
    assert!(err(ModelInput::Image(&images)).contains("input adapter"));
    let image_model = PerceiverIo::new(small(true), 1).unwrap();
    let ctx = Ctx::new(&tape, &image_model.params, false, &mut rng);
    let wrong = Tensor::zeros(&[1, 2, 3, 2]);
    let e = image_model.forward(&ctx, &ModelInput::Image(&wrong)).err().unwrap().to_string();
    assert!(e.contains("[2, 3, 2]") && e.contains("[3, 2, 2]"), "{e}");
}
