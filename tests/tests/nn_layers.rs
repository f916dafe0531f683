//! The pieces of `nn` against their definitions: AdamW by hand, schedules, clipping,
//! cross-entropy with ignore index and z-loss, dropout, rotary's relative-position property,
//! and the gradients of the composite layers.

use autograd::{check_gradients, GradCheck, ParamId, Tape, Var};
use nn::attention::{causal_mask, key_padding_mask, AttendOptions, Attention, AttentionBiases};
use nn::loss::{cross_entropy, CrossEntropy};
use nn::optim::{clip_grad_norm, AdamW, AdamWConfig, Decay, Schedule};
use nn::rotary::Rotary;
use nn::{Builder, Ctx, ParamStore};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tensor::Tensor;
use tests::uniform;

#[test]
fn adamw_matches_the_update_rule_by_hand() {
    let mut store = ParamStore::new();
    let w = store.add("w".into(), Tensor::from_vec(vec![1.0, -2.0], &[2]).unwrap(), true).unwrap();
    let cfg = AdamWConfig { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.1 };
    let mut opt = AdamW::new(cfg);
    let (mut x, mut m, mut v) = ([1.0f64, -2.0], [0.0f64; 2], [0.0f64; 2]);
    for step in 1..=3 {
        let g = [0.5f64 * step as f64, -0.25];
        let tape = Tape::new();
        let p = tape.param(w, store.value(w));
        let loss = p
            .mul(&Var::constant(Tensor::from_vec(g.iter().map(|&v| v as f32).collect(), &[2]).unwrap()))
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = tape.backward(&loss).unwrap();
        let lr = 0.01;
        opt.update(&mut store, &grads, lr).unwrap();
        for i in 0..2 {
            x[i] -= lr as f64 * 0.1 * x[i];
            m[i] = 0.9 * m[i] + 0.1 * g[i];
            v[i] = 0.99 * v[i] + 0.01 * g[i] * g[i];
            let (mh, vh) = (m[i] / (1.0 - 0.9f64.powi(step)), v[i] / (1.0 - 0.99f64.powi(step)));
            x[i] -= lr as f64 * mh / (vh.sqrt() + 1e-8);
        }
    }
    let got = store.value(w).to_vec().unwrap();
    for i in 0..2 {
        assert!((got[i] as f64 - x[i]).abs() < 1e-6, "{got:?} vs {x:?}");
    }
}

#[test]
fn warmup_then_cosine_or_constant() {
    let s = Schedule { peak: 1.0, warmup: 10, total: 110, decay: Decay::Cosine, min_ratio: 0.1 };
    assert!((s.lr(0) - 0.1).abs() < 1e-6 && (s.lr(9) - 1.0).abs() < 1e-6);
    assert!((s.lr(60) - 0.55).abs() < 1e-6, "halfway down the cosine: {}", s.lr(60));
    assert!((s.lr(110) - 0.1).abs() < 1e-6 && (s.lr(500) - 0.1).abs() < 1e-6);
    let c = Schedule { decay: Decay::Constant, ..s };
    assert_eq!(c.lr(500), 1.0);
}

#[test]
fn clipping_scales_the_global_norm() {
    let tape = Tape::new();
    let (a, b) = (ParamId::new(), ParamId::new());
    let va = tape.param(a, &Tensor::zeros(&[2]));
    let vb = tape.param(b, &Tensor::zeros(&[1]));
    let r1 = Var::constant(Tensor::from_vec(vec![3.0, 0.0], &[2]).unwrap());
    let r2 = Var::constant(Tensor::from_vec(vec![4.0], &[1]).unwrap());
    let loss = va.mul(&r1).unwrap().sum_all().unwrap().add(&vb.mul(&r2).unwrap().sum_all().unwrap()).unwrap();
    let mut g = tape.backward(&loss).unwrap();
    let norm = clip_grad_norm(&mut g, &[a, b], 1.0).unwrap();
    assert!((norm - 5.0).abs() < 1e-6);
    let ga = g.get(a).unwrap().to_vec().unwrap();
    let gb = g.get(b).unwrap().to_vec().unwrap();
    assert!((ga[0] - 0.6).abs() < 1e-5 && (gb[0] - 0.8).abs() < 1e-5);
}

#[test]
fn cross_entropy_ignores_targets_and_adds_z_loss() {
    let logits = uniform(&[2, 3, 5], -2.0, 2.0, 4);
    let targets = [1, 4, usize::MAX, 0, usize::MAX, 3];
    let opts = CrossEntropy { ignore_index: Some(usize::MAX), z_loss: 0.01 };
    let got =
        cross_entropy(&Var::constant(logits.clone()), &targets, opts).unwrap().value().to_scalar().unwrap();
    let v = logits.to_vec().unwrap();
    let (mut nll, mut z, mut n) = (0.0f64, 0.0f64, 0.0);
    for (i, &t) in targets.iter().enumerate() {
        if t == usize::MAX {
            continue;
        }
        let row = &v[i * 5..(i + 1) * 5];
        let lse = row.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
        nll += lse - row[t] as f64;
        z += lse * lse;
        n += 1.0;
    }
    let want = nll / n + 0.01 * z / n;
    assert!((got as f64 - want).abs() < 1e-5, "{got} vs {want}");
    // Its gradient, including the ignored rows (which must get none), by finite differences.
    check_gradients(
        |x| cross_entropy(&x[0], &targets, opts).map_err(|e| tensor::Error::new("ce", e.to_string())),
        &[logits],
        &GradCheck::default(),
    )
    .unwrap();
    let e = cross_entropy(&Var::constant(Tensor::zeros(&[2, 5])), &[0, 7], CrossEntropy::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("target 7"), "{e}");
}

#[test]
fn dropout_keeps_the_expectation_and_is_off_in_inference() {
    let store = ParamStore::new();
    let tape = Tape::new();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let x = Var::constant(Tensor::ones(&[100_000]));
    let ctx = Ctx::new(&tape, &store, true, &mut rng);
    let y = nn::dropout::dropout(&ctx, &x, 0.25).unwrap().value().to_vec().unwrap();
    let zeros = y.iter().filter(|&&v| v == 0.0).count() as f64 / y.len() as f64;
    let mean = y.iter().map(|&v| v as f64).sum::<f64>() / y.len() as f64;
    assert!((zeros - 0.25).abs() < 0.01 && (mean - 1.0).abs() < 0.01, "dropped {zeros}, mean {mean}");
    assert!(y.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let off = Ctx::new(&tape, &store, false, &mut rng);
    assert_eq!(
        nn::dropout::dropout(&off, &x, 0.25).unwrap().value().to_vec().unwrap(),
        x.value().to_vec().unwrap()
    );
}

#[test]
fn rotary_scores_depend_only_on_relative_position() {
    // <R(p) q, R(p') k> is the same for (p, p') = (3, 1) and (10, 8).
    let rotary = Rotary::new(8, 10000.0).unwrap();
    let positions: Vec<f32> = (0..12).map(|p| p as f32).collect();
    let tables = rotary.tables(&positions, 1, 12).unwrap();
    let q = uniform(&[1, 1, 1, 8], -1.0, 1.0, 1);
    let k = uniform(&[1, 1, 1, 8], -1.0, 1.0, 2);
    let at = |t: &Tensor, p: usize| {
        // Put the vector at position p of a 12-long sequence and rotate it there.
        let mut data = vec![0.0; 12 * 8];
        data[p * 8..(p + 1) * 8].copy_from_slice(&t.to_vec().unwrap());
        let seq = Var::constant(Tensor::from_vec(data, &[1, 1, 12, 8]).unwrap());
        tables.apply(seq.clone()).unwrap().value().narrow(2, p, 1).unwrap().to_vec().unwrap()
    };
    let dot = |a: Vec<f32>, b: Vec<f32>| a.iter().zip(&b).map(|(x, y)| x * y).sum::<f32>();
    let (near, far) = (dot(at(&q, 3), at(&k, 1)), dot(at(&q, 10), at(&k, 8)));
    assert!((near - far).abs() < 1e-5, "{near} vs {far}");
    // Rotation keeps norms.
    let n0: f32 = q.to_vec().unwrap().iter().map(|v| v * v).sum();
    let n1: f32 = at(&q, 7).iter().map(|v| v * v).sum();
    assert!((n0 - n1).abs() < 1e-5);
}

#[test]
fn rotary_and_masked_attention_have_exact_gradients() {
    let rotary = Rotary::new(4, 100.0).unwrap();
    let positions: Vec<f32> = (0..5).map(|p| p as f32).collect();
    let tables = rotary.tables(&positions, 1, 5).unwrap();
    let x = uniform(&[2, 2, 5, 6], -1.0, 1.0, 3);
    check_gradients(
        |v| tables.apply(v[0].clone()).map_err(|e| tensor::Error::new("rotary", e.to_string())),
        &[x],
        &GradCheck::default(),
    )
    .unwrap();
    // Scores with the causal mask: masked entries get no gradient, the rest flow through softmax.
    let s = uniform(&[2, 3, 5], -1.0, 1.0, 4);
    let mask = causal_mask(3, 5).unwrap();
    check_gradients(
        |v| v[0].masked_fill(&mask, nn::attention::MASKED)?.softmax(2),
        &[s],
        &GradCheck::default(),
    )
    .unwrap();
    assert_eq!(mask.to_vec().unwrap(), vec![0., 0., 0., 1., 1., 0., 0., 0., 0., 1., 0., 0., 0., 0., 0.]);
}

#[test]
fn padded_keys_have_no_influence() {
    // Row 0 pads its first two keys, row 1 none; changing padded keys changes nothing.
    let mut store = ParamStore::new();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let att = Attention::new(
        &mut Builder::new(&mut store, &mut rng),
        8,
        8,
        2,
        AttentionBiases { qkv: true, out: true },
        0.5,
    )
    .unwrap();
    let padding = [true, true, false, false, false, false, false, false, false, false];
    let mask = causal_mask(3, 5).unwrap().maximum(&key_padding_mask(&padding, 2, 5).unwrap()).unwrap();
    let run = |kv: &Tensor| {
        let tape = Tape::inference();
        let mut r = ChaCha8Rng::seed_from_u64(0);
        let ctx = Ctx::new(&tape, &store, false, &mut r);
        let kv = Var::constant(kv.clone());
        let q = kv.narrow(1, 2, 3).unwrap();
        att.forward(&ctx, &q, &kv, &AttendOptions { mask: Some(&mask), ..Default::default() })
            .unwrap()
            .value()
            .to_vec()
            .unwrap()
    };
    let x = uniform(&[2, 5, 8], -1.0, 1.0, 5);
    let mut changed = x.to_vec().unwrap();
    for v in &mut changed[..16] {
        *v += 3.0; // row 0, keys 0 and 1 (padding)
    }
    let (a, b) = (run(&x), run(&Tensor::from_vec(changed, &[2, 5, 8]).unwrap()));
    assert_eq!(a, b);
    assert!(key_padding_mask(&padding, 2, 4).unwrap_err().to_string().contains("10 flags"));
}

/// `Linear` multiplies by a transposed view of its `[out, in]` weight; the matmul rule computes
/// `dW = dyᵀ x` in the weight's own layout, so the gradient arrives contiguous (the optimizer
/// then copies nothing) and holds the same sums, over every leading axis, as the triple loop.
#[test]
fn linear_weight_gradient_arrives_in_the_weights_layout() {
    let mut store = ParamStore::new();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let linear = nn::linear::Linear::new(&mut Builder::new(&mut store, &mut rng), 5, 3, true, 0.5).unwrap();
    let x = uniform(&[2, 4, 5], -1.0, 1.0, 7);
    let dy = uniform(&[2, 4, 3], -1.0, 1.0, 8);
    let tape = Tape::new();
    let mut dropout_rng = ChaCha8Rng::seed_from_u64(0);
    let ctx = Ctx::new(&tape, &store, true, &mut dropout_rng);
    let y = linear.forward(&ctx, &Var::constant(x.clone())).unwrap();
    let loss = y.mul(&Var::constant(dy.clone())).unwrap().sum_all().unwrap();
    drop(ctx);
    let grads = tape.backward(&loss).unwrap();
    let dw = grads.get(linear.weight).unwrap();
    assert_eq!(dw.shape(), &[3, 5]);
    assert!(dw.is_contiguous(), "dW has strides {:?}", dw.layout().strides());
    let (x, dy, dw) = (x.to_vec().unwrap(), dy.to_vec().unwrap(), dw.to_vec().unwrap());
    for o in 0..3 {
        for i in 0..5 {
            let sum: f64 = (0..8).map(|t| dy[t * 3 + o] as f64 * x[t * 5 + i] as f64).sum();
            assert!(
                (dw[o * 5 + i] as f64 - sum).abs() < 1e-5,
                "dW[{o}, {i}] = {}, expected {sum}",
                dw[o * 5 + i]
            );
        }
    }
}
