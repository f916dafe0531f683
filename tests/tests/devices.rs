//! One op test suite, written once and run on every device (`tests::devices()`: the CPU, and
//! OpenCL with `--features opencl`): each op on random shapes, with inputs as transposed, sliced
//! and broadcast views, must agree with the CPU within `1e-5 + 1e-5·|cpu|` (transcendentals and
//! sums: the device's own `exp`/`erf` and summation order), `1e-4·k` for matmul; each backward
//! is checked through the gradients of a whole small model; and a short training run must
//! follow the CPU's loss curve within 1 % per step.

use autograd::Tape;
use nn::loss::{cross_entropy, CrossEntropy};
use nn::Ctx;
use perceiver::verify::Comparison;
use perceiver::{Input, PerceiverAr};
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tensor::{BinaryOp, Device, ReduceOp, Result, Tensor, UnaryOp};
use tests::{devices, shape, uniform, viewed, viewed_no_broadcast, Viewed};

/// Runs `f` on the CPU and on `device` (inputs moved there, views applied there) and compares.
fn agree(device: &Device, what: &str, inputs: &[&Viewed], tol: f32, f: impl Fn(&[Tensor]) -> Result<Tensor>) {
    let on = |d: &Device| -> (Vec<f32>, Vec<usize>) {
        let xs: Vec<Tensor> =
            inputs.iter().map(|v| v.apply(&v.base.to_device(d).unwrap()).unwrap()).collect();
        let y = f(&xs).unwrap_or_else(|e| panic!("{what} on {d}: {e}"));
        assert_eq!(y.device(), *d, "{what}: result on the wrong device");
        (y.to_vec().unwrap(), y.shape().to_vec())
    };
    let ((want, want_shape), (got, got_shape)) = (on(&Device::Cpu), on(device));
    // Whole tensors of one shape; inputs are in every op's domain, so NaN is a failure too.
    assert_eq!(want_shape, got_shape, "{what} on {device}: shapes");
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        let ok = (w - g).abs() <= tol + tol * w.abs() || w == g;
        assert!(ok, "{what} on {device}: element {i}: cpu {w}, device {g}");
    }
}

proptest! {
    #![proptest_config(tests::proptest_config(12))]

    #[test]
    fn elementwise_ops(x in shape(1..=4, 1..=5).prop_flat_map(|s| viewed(s, 0.1, 3.0)), y in any::<u64>()) {
        for d in devices() {
            for &op in UnaryOp::ALL {
                // Inputs in [0.1, 3) moved onto the op's test domain.
                let dom = op.domain();
                let scale = (dom.high - dom.low) / 2.9;
                agree(&d, &format!("{op:?}"), &[&x], 2e-6, |t| t[0].mul_scalar(scale)?.add_scalar(dom.low - 0.1 * scale)?.unary(op));
            }
            // Binary with a broadcast right operand.
            let last = x.shape[x.shape.len() - 1];
            let b = Viewed { base: uniform(&[last], 0.5, 2.0, y), recipe: tests::Recipe::Contiguous, shape: vec![last] };
            for &op in BinaryOp::ALL {
                // Exactly rounded ops agree to the bit; the others (erf, exp) as the unary ones do.
                let tol = if op.tolerance() == 0.0 { 0.0 } else { 2e-6 };
                agree(&d, &format!("{op:?}"), &[&x, &b], tol, |t| t[0].binary(&t[1], op));
                agree(&d, &format!("{op:?} swapped"), &[&x, &b], tol, |t| t[1].binary(&t[0], op));
            }
            agree(&d, "where", &[&x, &b], 0.0, |t| t[0].sub_scalar(1.5)?.gt(&Tensor::scalar(0.0).to_device(&t[0].device())?)?.where_cond(&t[0], &t[1]));
            agree(&d, "contiguous", &[&x], 0.0, |t| t[0].contiguous());
            // One AdamW step (x, m and v from the same input, shifted apart; v kept positive).
            let step = tensor::AdamWStep { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, decay: 0.999, c1: 0.19, c2: 0.002 };
            for (i, name) in ["adamw x", "adamw m", "adamw v"].iter().enumerate() {
                agree(&d, name, &[&x], 1e-6, |t| {
                    let (g, m, v) = (t[0].sub_scalar(1.0)?, t[0].mul_scalar(0.1)?, t[0].mul_scalar(0.01)?);
                    Ok(t[0].adamw_step(&g, &m, &v, &step)?[i].clone())
                });
                agree(&d, &format!("{name} in place"), &[&x], 1e-6, |t| {
                    let (g, mut m, mut v) = (t[0].sub_scalar(1.0)?, t[0].mul_scalar(0.1)?, t[0].mul_scalar(0.01)?);
                    let mut x = t[0].contiguous()?.add_scalar(0.0)?;
                    x.adamw_step_in_place(&g, &mut m, &mut v, &step)?;
                    Ok([x, m, v][i].clone())
                });
            }
        }
    }

    #[test]
    fn reductions_softmax_and_layer_norm(x in shape(1..=3, 1..=6).prop_flat_map(|s| viewed_no_broadcast(s, -2.0, 2.0)), axis in 0usize..3, seed in any::<u64>()) {
        let axis = axis % x.shape.len();
        let c = x.shape[x.shape.len() - 1];
        let w = Viewed { base: uniform(&[c], 0.5, 1.5, seed), recipe: tests::Recipe::Contiguous, shape: vec![c] };
        let b = Viewed { base: uniform(&[c], -0.5, 0.5, seed ^ 1), recipe: tests::Recipe::Contiguous, shape: vec![c] };
        for d in devices() {
            for op in [ReduceOp::Sum, ReduceOp::Max, ReduceOp::Min, ReduceOp::LogSumExp] {
                agree(&d, &format!("{op:?}"), &[&x], 1e-5, |t| t[0].reduce(axis, op, true));
            }
            agree(&d, "softmax", &[&x], 1e-5, |t| t[0].softmax(axis));
            agree(&d, "softmax_backward", &[&x, &x], 1e-5, |t| t[0].softmax(axis)?.softmax_backward(&t[1], axis));
            agree(&d, "layer_norm", &[&x, &w, &b], 1e-4, |t| t[0].layer_norm(&t[1], &t[2], 1e-5));
            agree(&d, "layer_norm dx", &[&x, &w, &b], 1e-4, |t| {
                let p = t[0].layer_norm_with_stats(&t[1], &t[2], 1e-5)?;
                Ok(t[0].layer_norm_backward(&t[1], &p.mean, &p.rstd, &t[0])?.0)
            });
            agree(&d, "layer_norm dx added", &[&x, &w, &b], 1e-4, |t| {
                let p = t[0].layer_norm_with_stats(&t[1], &t[2], 1e-5)?;
                let acc = t[0].contiguous()?.add_scalar(1.0)?;
                Ok(t[0].layer_norm_backward_add(acc, (&t[1], &p.mean, &p.rstd), &t[0])?.0)
            });
            agree(&d, "layer_norm dw db", &[&x, &w, &b], 1e-4, |t| {
                let p = t[0].layer_norm_with_stats(&t[1], &t[2], 1e-5)?;
                let (_, dw, db) = t[0].layer_norm_backward(&t[1], &p.mean, &p.rstd, &t[0])?;
                Tensor::cat(&[&dw, &db], 0)
            });
            let argmax = |dev: &Device| x.apply(&x.base.to_device(dev).unwrap()).unwrap().argmax(axis).unwrap();
            prop_assert_eq!(argmax(&Device::Cpu), argmax(&d));
        }
    }

    #[test]
    fn matmul_with_strided_and_broadcast_operands(batch in shape(0..=2, 1..=3), m in 1usize..20, k in 1usize..20, n in 1usize..20, shared in any::<bool>(), seed in any::<u64>()) {
        let a = Viewed { base: uniform(&[batch.clone(), vec![k, m]].concat(), -1.0, 1.0, seed), recipe: tests::Recipe::Transposed(batch.len(), batch.len() + 1), shape: [batch.clone(), vec![m, k]].concat() };
        let bs = if shared { vec![k, n] } else { [batch.clone(), vec![k, n]].concat() };
        let b = Viewed { base: uniform(&bs, -1.0, 1.0, seed ^ 2), recipe: tests::Recipe::Contiguous, shape: bs.clone() };
        for d in devices() {
            agree(&d, "matmul", &[&a, &b], 1e-4 * k as f32, |t| t[0].matmul(&t[1]));
            let bias = Viewed { base: uniform(&[n], -1.0, 1.0, seed ^ 3), recipe: tests::Recipe::Contiguous, shape: vec![n] };
            let out_shape = [batch.clone(), vec![m, n]].concat();
            let residual = Viewed { base: uniform(&out_shape, -1.0, 1.0, seed ^ 4), recipe: tests::Recipe::Contiguous, shape: out_shape.clone() };
            agree(&d, "matmul_plus", &[&a, &b, &bias, &residual], 1e-4 * k as f32, |t| t[0].matmul_plus(&t[1], Some(&t[2]), Some(&t[3])));
            // GELU and its derivative made with the product, and the first of a pair multiplied
            // by factors (each device's own way: the CPU's GEMM in the product, OpenCL after).
            let cat_rows = |parts: &[&Tensor]| {
                let rows: Vec<Tensor> = parts.iter().map(|x| x.reshape(&[usize::MAX])).collect::<tensor::Result<_>>()?;
                Tensor::cat(&rows.iter().collect::<Vec<_>>(), 0)
            };
            agree(&d, "matmul_plus_gelu", &[&a, &b, &bias], 1e-4 * k as f32, |t| {
                let (activations, derivatives) = t[0].matmul_plus_gelu(&t[1], Some(&t[2]))?;
                cat_rows(&[&activations, &derivatives])
            });
            agree(&d, "matmul_pair_scaled", &[&a, &b, &residual], 1e-4 * k as f32, |t| {
                let second = (&t[2], &t[2].transpose(batch.len(), batch.len() + 1)?);
                let (first, other) = Tensor::matmul_pair_scaled((&t[0], &t[1]), second, &t[2])?;
                cat_rows(&[&first, &other])
            });
            // Two products made together (each device's own way), the first also added.
            agree(&d, "matmul_pair", &[&a, &b, &residual], 1e-4 * k as f32, |t| {
                let (ab, other) = Tensor::matmul_pair((&t[0], &t[1]), (&t[2], &t[2].transpose(batch.len(), batch.len() + 1)?))?;
                let (sum, _) = t[2].clone().matmul_add_pair((&t[0], &t[1]), (&t[0], &t[1]))?;
                let rows = |x: &Tensor| x.reshape(&[usize::MAX]);
                Tensor::cat(&[&rows(&ab)?, &rows(&other)?, &rows(&sum)?], 0)
            });
        }
    }

    #[test]
    fn indexing_ops(x in shape(2..=3, 1..=5).prop_flat_map(|s| viewed(s, -1.0, 1.0)), picks in prop::collection::vec(0usize..8, 1..6), axis in 0usize..3) {
        let axis = axis % x.shape.len();
        let size = x.shape[axis];
        let idx: Vec<usize> = picks.iter().map(|p| p % size).collect();
        for d in devices() {
            agree(&d, "index_select", &[&x], 0.0, |t| t[0].index_select(axis, &idx));
            agree(&d, "index_add", &[&x], 1e-6, |t| t[0].index_select(axis, &idx)?.index_add(axis, &idx, size + 1));
            let mut gshape = x.shape.clone();
            gshape[axis] = 2;
            let gidx: Vec<usize> = (0..gshape.iter().product::<usize>()).map(|i| picks[i % picks.len()] % size).collect();
            agree(&d, "gather", &[&x], 0.0, |t| t[0].gather(axis, &gidx, &gshape));
            agree(&d, "scatter_add", &[&x], 1e-6, |t| t[0].gather(axis, &gidx, &gshape)?.scatter_add(axis, &gidx, size));
            agree(&d, "cat", &[&x, &x], 0.0, |t| Tensor::cat(&[&t[0], &t[1], &t[0]], axis));
            agree(&d, "write_narrow", &[&x], 0.0, |t| {
                // Into a view of a taller tensor (so through a private copy), then in place.
                let mut shape = x.shape.clone();
                shape[axis] += 2;
                let parts = [&t[0].mul_scalar(0.5)?, &t[0], &t[0]];
                let mut big = Tensor::cat(&parts, axis)?.narrow(axis, 0, shape[axis])?;
                big.write_narrow(axis, 1, &t[0])?;
                big.write_narrow(axis, 0, &t[0].narrow(axis, 0, 1)?.mul_scalar(3.0)?)?;
                Ok(big)
            });
            let rows = x.shape.iter().product::<usize>();
            let ids = [0, 1 % rows, rows - 1];
            agree(&d, "embedding", &[&x], 0.0, |t| t[0].flatten()?.reshape(&[usize::MAX, 1])?.embedding(&ids, &[3]));
            agree(&d, "embedding_plus", &[&x], 0.0, |t| {
                let table = t[0].flatten()?.reshape(&[usize::MAX, 1])?;
                table.embedding_plus(&ids, &[1, 3], &table.narrow(0, 0, 1)?.broadcast_to(&[3, 1])?)
            });
        }
    }
}

/// A copy of heads `x` `[B, H, T, D]` that no other tensor shares, stored `[B, T, H, D]` (as a
/// model's projections are) and read through a permuted layout.
fn private_heads(x: &Tensor) -> tensor::Result<Tensor> {
    x.permute(&[0, 2, 1, 3])?.unary(tensor::UnaryOp::Identity)?.permute(&[0, 2, 1, 3])
}

proptest! {
    #![proptest_config(tests::proptest_config(12))]

    /// The fused attention, forward and backward (gradients of q, k and v through the tape),
    /// with every kind of visibility, on each device against the CPU.
    #[test]
    fn fused_attention(
        b in 1usize..3, h in 1usize..3, l in 1usize..40, n in 1usize..150, d in 1usize..9,
        causal in any::<bool>(), positions in any::<bool>(), hidden in 0u8..3, pattern in 0u8..5,
        seed in any::<u64>(),
    ) {
        let vis = tests::with_pattern(tests::visibility(b, l, n, causal, positions, hidden, seed), h, pattern, seed);
        let q = Viewed { base: uniform(&[b, l, h, d], -1.5, 1.5, seed), recipe: tests::Recipe::Transposed(1, 2), shape: vec![b, h, l, d] };
        let k = Viewed { base: uniform(&[b, h, n, d], -1.5, 1.5, seed + 1), recipe: tests::Recipe::Contiguous, shape: vec![b, h, n, d] };
        let v = Viewed { base: uniform(&[b, h, n, d], -1.0, 1.0, seed + 2), recipe: tests::Recipe::Contiguous, shape: vec![b, h, n, d] };
        let weights = uniform(&[b, h, l, d], -1.0, 1.0, seed + 3);
        for dev in devices() {
            agree(&dev, "attention", &[&q, &k, &v], 1e-5, |t| t[0].attention(&t[1], &t[2], &vis));
            // Rotary's pair rotation over half of each head, tables shared by the heads.
            let half = d / 2;
            if half > 0 {
                let table = |s: u64| Viewed { base: uniform(&[b, 1, l, 2 * half], -1.0, 1.0, s), recipe: tests::Recipe::Contiguous, shape: vec![b, 1, l, 2 * half] };
                let (cos, sin) = (table(seed + 4), table(seed + 5));
                agree(&dev, "rotate_pairs", &[&q, &cos, &sin], 1e-6, |t| t[0].rotate_pairs(&t[1], &t[2]));
                // Written over a private copy, read as heads from [B, L, H, D] storage.
                agree(&dev, "rotate_pairs_owned", &[&q, &cos, &sin], 1e-6, |t| {
                    private_heads(&t[0])?.rotate_pairs_owned(&t[1], &t[2])
                });
            }
            // The backward that writes dk and dv over private keys and values.
            agree(&dev, "attention_backward_over_keys", &[&q, &k, &v], 1e-5, |t| {
                let parts = t[0].attention_with_stats(&t[1], &t[2], &vis)?;
                let g = weights.to_device(&t[0].device())?;
                let (dq, dk, dv) =
                    t[0].attention_backward_over_keys(private_heads(&t[1])?, private_heads(&t[2])?, &parts, &g, &vis)?;
                Tensor::cat(&[&dq.flatten()?, &dk.flatten()?, &dv.flatten()?], 0)
            });
            for (i, name) in ["dq", "dk", "dv"].iter().enumerate() {
                agree(&dev, name, &[&q, &k, &v], 1e-5, |t| {
                    let tape = Tape::new();
                    let x: Vec<_> = t.iter().map(|t| tape.leaf(t)).collect();
                    let w = autograd::Var::constant(weights.to_device(&t[0].device())?);
                    let loss = x[0].attention(&x[1], &x[2], &vis)?.mul(&w)?.sum_all()?;
                    let grads = tape.backward(&loss)?;
                    Ok(grads.wrt(&x[i]).cloned().unwrap_or(t[i].zeros_like()?))
                });
            }
        }
    }
}

/// The gradients of every parameter of a small model (both variants), on each device, against
/// the CPU: every backward rule and fused backward kernel runs on the device here.
#[test]
fn model_gradients_agree_across_devices() {
    for paper in [false, true] {
        let mut config = tests::model_config(paper, 13, 10, 4, 16, 2, 2);
        config.init_scale = 0.3;
        config.cross_attend_dropout = 0.0;
        let ids: Vec<usize> = (0..20).map(|i| (i * 7 + 3) % 13).collect();
        let targets: Vec<usize> = (0..8).map(|i| (i * 5 + 1) % 13).collect();
        let run = |device: &Device| {
            let mut model = PerceiverAr::new(config.clone(), 11).unwrap();
            model.to_device(device).unwrap();
            let tape = Tape::new();
            let mut rng = ChaCha8Rng::seed_from_u64(0);
            let ctx = Ctx::new(&tape, &model.params, false, &mut rng);
            let logits =
                model.forward(&ctx, &Input { ids: &ids, batch: 2, seq_len: 10, prefix_len: 6 }).unwrap();
            let loss =
                cross_entropy(&logits, &targets, CrossEntropy { ignore_index: None, z_loss: 1e-3 }).unwrap();
            let value = loss.value().to_scalar().unwrap();
            drop(ctx);
            let grads = tape.backward(&loss).unwrap();
            let g: Vec<(String, Tensor)> =
                model.params.iter().map(|p| (p.name.clone(), grads.get(p.id).unwrap().clone())).collect();
            (value, g)
        };
        let (cpu_loss, cpu) = run(&Device::Cpu);
        for d in devices() {
            let (loss, grads) = run(&d);
            assert!((loss - cpu_loss).abs() < 1e-5, "loss on {d}: {loss} vs {cpu_loss}");
            assert_eq!(grads.len(), cpu.len(), "paper={paper}: gradients on {d}");
            for ((name, g), (cpu_name, want)) in grads.iter().zip(&cpu) {
                assert_eq!(name, cpu_name, "paper={paper}: parameters in one order on {d}");
                // Whole tensors of one shape, every value finite, within 1e-4 of the largest.
                let (g, want) =
                    ((&g.to_vec().unwrap()[..], g.shape()), (&want.to_vec().unwrap()[..], want.shape()));
                let c = Comparison::new(name, g, want, 1e-4, true);
                assert!(c.passed(), "paper={paper}: on {d}: {c}");
            }
        }
    }
}

/// Perceiver IO (tokens with padding, tied output) and Perceiver (image, classifier): logits,
/// loss and every parameter gradient on each device against the CPU, from the library's dumps.
#[test]
fn encoder_decoder_models_agree_across_devices() {
    use perceiver::perceiver_io::{library, ModelInput, PerceiverIo};
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    for name in ["perceiver-io-mlm", "perceiver-image"] {
        let dir = root.join(name);
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
        let config = library::config_from_library(&meta["config"]).unwrap();
        let weights = nn::checkpoint::read_safetensors(&dir.join("model.safetensors")).unwrap();
        let case = nn::checkpoint::read_safetensors(&dir.join("case.safetensors")).unwrap();
        let run = |device: &Device| {
            let mut model = PerceiverIo::new(config.clone(), 0).unwrap();
            library::load_library_weights(&mut model, &weights).unwrap();
            model.to_device(device).unwrap();
            let tape = Tape::new();
            let mut rng = ChaCha8Rng::seed_from_u64(0);
            let ctx = Ctx::new(&tape, &model.params, false, &mut rng);
            let (labels, _) = case.int("labels").unwrap();
            let targets: Vec<usize> =
                labels.iter().map(|&l| if l < 0 { usize::MAX } else { l as usize }).collect();
            let images;
            let (ids, padding): (Vec<usize>, Vec<bool>);
            let input = if let Ok((values, shape)) = case.int("inputs") {
                ids = values.iter().map(|&v| v as usize).collect();
                padding = case.int("pad_mask").unwrap().0.iter().map(|&m| m != 0).collect();
                ModelInput::Tokens { ids: &ids, batch: shape[0], len: shape[1], padding: Some(&padding) }
            } else {
                images = case.float("inputs").unwrap().to_device(device).unwrap();
                ModelInput::Image(&images)
            };
            let logits = model.forward(&ctx, &input).unwrap();
            let loss = cross_entropy(
                &logits,
                &targets,
                CrossEntropy { ignore_index: Some(usize::MAX), z_loss: 0.0 },
            )
            .unwrap();
            let value = loss.value().to_scalar().unwrap();
            drop(ctx);
            let grads = tape.backward(&loss).unwrap();
            let g: Vec<(String, Tensor)> =
                model.params.iter().map(|p| (p.name.clone(), grads.get(p.id).unwrap().clone())).collect();
            (value, g)
        };
        let (cpu_loss, cpu) = run(&Device::Cpu);
        for d in devices() {
            let (loss, grads) = run(&d);
            assert!((loss - cpu_loss).abs() < 1e-5, "{name}: loss on {d}: {loss} vs {cpu_loss}");
            for ((n, g), (_, want)) in grads.iter().zip(&cpu) {
                let (g, want) =
                    ((&g.to_vec().unwrap()[..], g.shape()), (&want.to_vec().unwrap()[..], want.shape()));
                // Within 1e-4 of the tensor's largest magnitude, or 1e-7 absolute: some gradients
                // here (key biases exactly, a decoder's query norm nearly) are rounding noise.
                let c = Comparison::new(n, g, want, 1e-4, true);
                assert!(c.passed() || c.max_abs_error <= 1e-7, "{name} on {d}: {c}");
            }
        }
    }
}

/// Cached generation on each device: through prompt, cached steps, refills and a sliding
/// window, every step's logits agree with the CPU's cached run and with the device's own full
/// pass for that step's split (the key/value cache's in-place writes run on the device here).
#[test]
fn cached_generation_agrees_across_devices() {
    use perceiver::generate::{full_pass_logits, CachedGenerator};
    for paper in [false, true] {
        let mut config = tests::model_config(paper, 13, 12, 6, 16, 2, 2);
        config.init_scale = 0.3;
        let tokens: Vec<usize> = (0..40).map(|i| (i * 7 + 3) % 13).collect();
        let run = |device: &Device| -> Vec<(Vec<f32>, Vec<f32>)> {
            let mut model = PerceiverAr::new(config.clone(), 5).unwrap();
            model.to_device(device).unwrap();
            let mut generator = CachedGenerator::new(&model, 6).unwrap();
            let mut step = generator.prompt(&tokens[..5]).unwrap();
            let mut out = Vec::new();
            for t in 5..tokens.len() {
                out.push((step.logits.clone(), full_pass_logits(&model, &tokens[..t], step.split).unwrap()));
                step = generator.push(tokens[t]).unwrap();
            }
            out
        };
        let cpu = run(&Device::Cpu);
        for d in devices() {
            for (i, ((cached, full), (cpu_cached, _))) in run(&d).iter().zip(&cpu).enumerate() {
                for (what, got, want) in [("the CPU", cached, cpu_cached), ("its full pass", cached, full)] {
                    let c = Comparison::new(
                        &format!("step {i}"),
                        (&got[..], &[13][..]),
                        (&want[..], &[13][..]),
                        1e-4,
                        true,
                    );
                    assert!(c.passed(), "paper={paper}: cached on {d} against {what}: {c}");
                }
            }
        }
    }
}

/// Training the copy task for a fixed number of steps follows the CPU's loss curve.
#[test]
fn training_follows_the_cpu_loss_curve() {
    use perceiver::train::Trainer;
    let mut config = tests::copy_run(4, 32, 2, 8, 30, 4);
    config.stop_when_solved = false;
    let curve = |device: &Device| -> Vec<f32> {
        let mut trainer = Trainer::new(config.clone()).unwrap();
        trainer.to_device(device).unwrap();
        (0..30).map(|_| trainer.step().unwrap().loss).collect()
    };
    let cpu = curve(&Device::Cpu);
    assert!(cpu[29] < cpu[0] - 0.5, "the CPU run learns: {cpu:?}");
    for d in devices() {
        let got = curve(&d);
        for (step, (a, b)) in got.iter().zip(&cpu).enumerate() {
            // Stated tolerance: 1e-2 relative per step. The devices sum in different orders, and
            // training amplifies rounding differences step by step (1.7e-3 seen at step 24 on PoCL).
            assert!((a - b).abs() <= 1e-2 * b.abs(), "step {step} on {d}: loss {a} vs cpu {b}");
        }
    }
}

/// Moving between devices is explicit: an op on tensors of two devices is an error naming both.
/// (Only with a second device: a CPU-only build has nothing to mix.)
#[cfg(feature = "opencl")]
#[test]
fn mixing_devices_is_an_error() {
    let others: Vec<Device> = devices().into_iter().filter(|d| *d != Device::Cpu).collect();
    assert!(!others.is_empty(), "the opencl feature gives a second device");
    for d in others {
        let a = Tensor::ones(&[2, 3]);
        let b = Tensor::ones(&[2, 3]).to_device(&d).unwrap();
        let e = a.add(&b).unwrap_err().to_string();
        assert!(e.contains("different devices") && e.contains("cpu") && e.contains(&d.name()), "{e}");
        let e = b.matmul(&a.t().unwrap()).unwrap_err().to_string();
        assert!(e.starts_with("matmul: operands on different devices"), "{e}");
        assert_eq!(b.to_device(&Device::Cpu).unwrap().to_vec().unwrap(), vec![1.0; 6]);
    }
}
