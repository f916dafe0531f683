//! The tape's own contract: accumulation, broadcasting undone, parameter ids, inference mode,
//! and that `backward` consumes what was recorded.

use autograd::{ParamId, Tape, Var};
use tensor::Tensor;
use tests::{assert_close, uniform};

#[test]
fn a_value_used_twice_gets_both_gradients() {
    // y = x*x + x  =>  dy/dx = 2x + 1
    let tape = Tape::new();
    let x0 = uniform(&[5], -1.0, 1.0, 1);
    let x = tape.leaf(&x0);
    let y = x.mul(&x).unwrap().add(&x).unwrap().sum_all().unwrap();
    let g = tape.backward(&y).unwrap();
    assert_close(g.wrt(&x).unwrap(), &x0.mul_scalar(2.0).unwrap().add_scalar(1.0).unwrap(), 1e-6, 0.0);
}

#[test]
fn broadcasting_is_undone_by_summing() {
    // out[n, c] = x[n, c] + bias[c]  =>  dbias = Σ_n g[n, c]
    let tape = Tape::new();
    let bias_id = ParamId::new();
    let x = tape.leaf(&uniform(&[4, 3], -1.0, 1.0, 2));
    let bias = tape.param(bias_id, &Tensor::zeros(&[3]));
    let r = uniform(&[4, 3], -1.0, 1.0, 3);
    let loss = x.add(&bias).unwrap().mul(&Var::constant(r.clone())).unwrap().sum_all().unwrap();
    let g = tape.backward(&loss).unwrap();
    assert_close(g.get(bias_id).unwrap(), &r.sum(0).unwrap(), 1e-6, 0.0);
}

#[test]
fn parameters_come_back_by_id_and_unused_ones_are_absent() {
    let tape = Tape::new();
    let (used, unused) = (ParamId::new(), ParamId::new());
    let w = tape.param(used, &Tensor::ones(&[2, 2]));
    let _v = tape.param(unused, &Tensor::ones(&[2]));
    let loss = w.sum_all().unwrap();
    let g = tape.backward(&loss).unwrap();
    assert_close(g.get(used).unwrap(), &Tensor::ones(&[2, 2]), 0.0, 0.0);
    assert!(g.get(unused).is_none());
    assert_eq!(g.params().count(), 1);
}

#[test]
fn inference_mode_records_nothing() {
    let tape = Tape::inference();
    let w = tape.param(ParamId::new(), &Tensor::ones(&[2, 2]));
    let y = w.matmul(&w).unwrap().exp().unwrap();
    assert!(!y.is_tracked());
    assert_eq!(tape.len(), 0);
    let err = tape.backward(&y.sum_all().unwrap()).unwrap_err().to_string();
    assert!(err.contains("does not depend"), "{err}");
}

#[test]
fn backward_consumes_the_tape_and_stale_values_are_refused() {
    let tape = Tape::new();
    let x = tape.leaf(&Tensor::ones(&[3]));
    let loss = x.square().unwrap().sum_all().unwrap();
    assert!(tape.len() >= 3);
    let keep = tape.clone();
    tape.backward(&loss).unwrap();
    assert_eq!(keep.len(), 0, "the recorded nodes were consumed");
    let err = x.add(&x).unwrap_err().to_string();
    assert!(err.contains("backward already ran"), "{err}");
}

#[test]
fn the_loss_must_be_a_single_value() {
    let tape = Tape::new();
    let x = tape.leaf(&Tensor::ones(&[3]));
    let err = tape.backward(&x.exp().unwrap()).unwrap_err().to_string();
    assert!(err.contains("one element"), "{err}");
}

#[test]
fn ops_after_the_loss_and_constants_get_no_gradient() {
    let tape = Tape::new();
    let x = tape.leaf(&Tensor::full(2.0, &[1]));
    let c = Var::constant(Tensor::full(3.0, &[1]));
    let loss = x.mul(&c).unwrap().sum_all().unwrap();
    let _later = x.exp().unwrap(); // recorded after the loss: ignored
    let g = tape.backward(&loss).unwrap();
    assert_eq!(g.wrt(&x).unwrap().to_vec().unwrap(), vec![3.0]);
    assert!(g.wrt(&c).is_none());
}

#[test]
fn values_from_two_tapes_do_not_mix() {
    let (t1, t2) = (Tape::new(), Tape::new());
    let a = t1.leaf(&Tensor::ones(&[2]));
    let b = t2.leaf(&Tensor::ones(&[2]));
    let err = a.add(&b).unwrap_err().to_string();
    assert!(err.contains("another tape"), "{err}");
}

#[test]
fn a_parameter_lifted_twice_gets_the_sum() {
    // A tied weight: the same ParamId lifted as two leaves, d(sum(2w) + sum(3w))/dw = 5.
    let tape = Tape::new();
    let id = ParamId::new();
    let a = tape.param(id, &Tensor::ones(&[2]));
    let b = tape.param(id, &Tensor::ones(&[2]));
    let loss = a.mul_scalar(2.0).unwrap().add(&b.mul_scalar(3.0).unwrap()).unwrap().sum_all().unwrap();
    let g = tape.backward(&loss).unwrap();
    assert_eq!(g.get(id).unwrap().to_vec().unwrap(), vec![5.0, 5.0]);
}
