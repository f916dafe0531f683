//! Views against naive index arithmetic: for every view, element `i` of the view must be the
//! base element that the definition of the view names, and views must not copy.

use proptest::prelude::*;
use tensor::reference::for_each_index;
use tensor::Tensor;
use tests::{shape, uniform};

fn cases() -> ProptestConfig {
    tests::proptest_config(64)
}

/// Base element at a multi-index, by plain row-major arithmetic on the host copy.
fn at(data: &[f32], shape: &[usize], index: &[usize]) -> f32 {
    let mut flat = 0;
    for (i, d) in index.iter().zip(shape) {
        flat = flat * d + i;
    }
    data[flat]
}

/// Checks `view[i] == base[map(i)]` for every index of the view.
fn check(view: &Tensor, base: &Tensor, map: impl Fn(&[usize]) -> Vec<usize>) {
    let data = base.to_vec().unwrap();
    let got = view.to_vec().unwrap();
    let mut k = 0;
    for_each_index(view.shape(), |i| {
        assert_eq!(got[k], at(&data, base.shape(), &map(i)), "at {i:?}");
        assert_eq!(view.get(i).unwrap(), got[k]);
        k += 1;
    });
    assert_eq!(k, view.numel());
}

proptest! {
    #![proptest_config(cases())]

    /// `write_narrow` puts a (strided) source over entries `start..` of one axis of its target
    /// and leaves the rest alone: the result equals the concatenation of the untouched parts
    /// and the source. A clone and a view taken before the write keep their old values (value
    /// semantics); once private the target is written in place; a strided view as the target
    /// is written through a private copy.
    #[test]
    fn write_narrow_is_a_concatenation_and_keeps_value_semantics(
        s in shape(1..=3, 1..=5), axis in 0usize..3, extra in 0usize..3, start in 0usize..3, transposed in any::<bool>(), seed in any::<u64>()
    ) {
        let axis = axis % s.len();
        let size = s[axis] + extra;
        let start = start.min(extra);
        let mut target_shape = s.clone();
        target_shape[axis] = size;
        let src = if transposed && s.len() >= 2 {
            let mut t = s.clone();
            t.swap(0, 1);
            uniform(&t, -1.0, 1.0, seed).transpose(0, 1).unwrap()
        } else {
            uniform(&s, -1.0, 1.0, seed)
        };
        let concatenated = |old: &Tensor, new: &Tensor| {
            let before = old.narrow(axis, 0, start).unwrap();
            let after = old.narrow(axis, start + s[axis], size - start - s[axis]).unwrap();
            Tensor::cat(&[&before, new, &after], axis).unwrap().to_vec().unwrap()
        };
        let old = uniform(&target_shape, 2.0, 3.0, seed ^ 1);
        let mut target = old.clone();
        let view_before = old.narrow(axis, 0, size).unwrap();
        target.write_narrow(axis, start, &src).unwrap();
        prop_assert_eq!(target.to_vec().unwrap(), concatenated(&old, &src));
        prop_assert_eq!(view_before.to_vec().unwrap(), old.to_vec().unwrap());
        prop_assert!(!target.shares_storage(&old));
        // Written again, now private: in place, and still right.
        let written = target.clone().to_vec().unwrap();
        let twice = src.mul_scalar(2.0).unwrap();
        target.write_narrow(axis, start, &twice).unwrap();
        let want = concatenated(&Tensor::from_vec(written, &target_shape).unwrap(), &twice);
        prop_assert_eq!(target.to_vec().unwrap(), want);
        // A strided target: every other entry of the last axis of a wider tensor.
        let last = s.len() - 1;
        let mut wide_shape = target_shape.clone();
        wide_shape[last] *= 2;
        let wide = uniform(&wide_shape, 0.0, 1.0, seed ^ 2);
        let mut split_shape = target_shape.clone();
        split_shape.push(2);
        let strided = wide.reshape(&split_shape).unwrap().narrow(last + 1, 0, 1).unwrap().squeeze(last + 1).unwrap();
        let want = concatenated(&strided, &src);
        let mut strided = strided;
        strided.write_narrow(axis, start, &src).unwrap();
        prop_assert_eq!(strided.to_vec().unwrap(), want);
    }

    #[test]
    fn write_narrow_refuses_what_does_not_fit(rows in 1usize..4, cols in 1usize..4, start in 0usize..5) {
        let mut target = Tensor::zeros(&[rows, cols]);
        let src = Tensor::ones(&[1, cols]);
        prop_assert_eq!(target.write_narrow(0, start, &src).is_ok(), start < rows);
        prop_assert!(target.write_narrow(0, 0, &Tensor::ones(&[1, cols + 1])).is_err());
        prop_assert!(target.write_narrow(0, 0, &Tensor::ones(&[cols])).is_err());
        prop_assert!(target.write_narrow(2, 0, &src).is_err());
        prop_assert_eq!(target.write_narrow(1, start, &Tensor::ones(&[rows, 1])).is_ok(), start < cols);
    }

    #[test]
    fn transpose_swaps_indices(s in shape(2..=4, 1..=5), a in 0usize..4, b in 0usize..4, seed in any::<u64>()) {
        let (a, b) = (a % s.len(), b % s.len());
        let base = uniform(&s, -1.0, 1.0, seed);
        let v = base.transpose(a, b).unwrap();
        prop_assert!(v.shares_storage(&base));
        check(&v, &base, |i| { let mut j = i.to_vec(); j.swap(a, b); j });
    }

    #[test]
    fn permute_reorders_indices(s in shape(1..=4, 1..=4), seed in any::<u64>(), rot in 0usize..4) {
        let r = s.len();
        let dims: Vec<usize> = (0..r).map(|d| (d + rot) % r).collect();
        let base = uniform(&s, -1.0, 1.0, seed);
        let v = base.permute(&dims).unwrap();
        check(&v, &base, |i| { let mut j = vec![0; r]; for (k, &d) in dims.iter().enumerate() { j[d] = i[k]; } j });
    }

    #[test]
    fn narrow_offsets_one_axis(s in shape(1..=4, 1..=6), axis in 0usize..4, start in 0usize..6, len in 0usize..6, seed in any::<u64>()) {
        let axis = axis % s.len();
        let start = start % s[axis];
        let len = len % (s[axis] - start + 1);
        let base = uniform(&s, -1.0, 1.0, seed);
        let v = base.narrow(axis, start, len).unwrap();
        check(&v, &base, |i| { let mut j = i.to_vec(); j[axis] += start; j });
    }

    #[test]
    fn broadcast_repeats_size_one_axes(s in shape(1..=3, 1..=4), lead in 0usize..3, seed in any::<u64>()) {
        // Shrink some axes to 1 in the base, then broadcast back up.
        let small: Vec<usize> = s.iter().enumerate().map(|(i, &d)| if i % 2 == 0 { 1 } else { d }).collect();
        let target: Vec<usize> = std::iter::repeat_n(2, lead).chain(s.iter().cloned()).collect();
        let base = uniform(&small, -1.0, 1.0, seed);
        let v = base.broadcast_to(&target).unwrap();
        prop_assert!(v.shares_storage(&base));
        check(&v, &base, |i| i[lead..].iter().zip(&small).map(|(&x, &d)| if d == 1 { 0 } else { x }).collect());
    }

    #[test]
    fn reshape_keeps_row_major_order(s in shape(1..=4, 1..=4), a in 0usize..4, b in 0usize..4, seed in any::<u64>()) {
        // Reshape a (possibly transposed) view to [numel] and to a 2-D split: the elements come
        // out in the view's row-major order, as a view when the layout allows it.
        let base = uniform(&s, -1.0, 1.0, seed);
        let v = base.transpose(a % s.len(), b % s.len()).unwrap();
        let flat = v.reshape(&[v.numel()]).unwrap();
        prop_assert_eq!(flat.to_vec().unwrap(), v.to_vec().unwrap());
        let first = v.shape()[0];
        let split = v.reshape(&[first, usize::MAX]).unwrap();
        prop_assert_eq!(split.to_vec().unwrap(), v.to_vec().unwrap());
        if v.is_contiguous() {
            prop_assert!(flat.shares_storage(&base));
        }
    }

    #[test]
    fn reshape_view_agrees_with_a_copy(s in shape(2..=4, 1..=4), start in 0usize..2, seed in any::<u64>()) {
        // A sliced view: merging axes that are still row-major inside must not copy, and in
        // every case the result equals reshaping a contiguous copy.
        let mut big = s.clone();
        big[0] += 2;
        let base = uniform(&big, -1.0, 1.0, seed);
        let v = base.narrow(0, start, s[0]).unwrap();
        let inner: usize = s[1..].iter().product();
        let r = v.reshape(&[s[0], inner]).unwrap();
        prop_assert!(r.shares_storage(&base), "merging row-major inner axes of a slice is a view");
        prop_assert_eq!(r.to_vec().unwrap(), v.contiguous().unwrap().reshape(&[s[0], inner]).unwrap().to_vec().unwrap());
    }

    #[test]
    fn contiguous_copies_strided_views_in_order(s in shape(2..=4, 1..=5), seed in any::<u64>()) {
        let base = uniform(&s, -1.0, 1.0, seed);
        let v = base.t().unwrap();
        let c = v.contiguous().unwrap();
        prop_assert!(c.is_contiguous());
        prop_assert_eq!(c.to_vec().unwrap(), v.to_vec().unwrap());
        let again = c.contiguous().unwrap();
        prop_assert!(again.shares_storage(&c), "contiguous of contiguous is free");
    }

    #[test]
    fn unsqueeze_then_squeeze_is_identity(s in shape(0..=3, 1..=4), axis in 0usize..4, seed in any::<u64>()) {
        let axis = axis % (s.len() + 1);
        let base = uniform(&s, -1.0, 1.0, seed);
        let u = base.unsqueeze(axis).unwrap();
        prop_assert_eq!(u.shape()[axis], 1);
        let back = u.squeeze(axis).unwrap();
        prop_assert_eq!(back.shape(), base.shape());
        prop_assert_eq!(u.to_vec().unwrap(), base.to_vec().unwrap());
    }
}

#[test]
fn view_errors_name_the_op_and_shape() {
    let t = Tensor::zeros(&[2, 3]);
    let e = t.narrow(1, 2, 2).unwrap_err().to_string();
    assert!(e.starts_with("narrow:") && e.contains("[2,3]"), "{e}");
    let e = t.broadcast_to(&[4, 2]).unwrap_err().to_string();
    assert!(e.contains("broadcast_to") && e.contains("[2,3]") && e.contains("[4,2]"), "{e}");
    let e = t.reshape(&[4, 2]).unwrap_err().to_string();
    assert!(e.starts_with("reshape:") && e.contains("[2,3]"), "{e}");
    let e = t.permute(&[0, 0]).unwrap_err().to_string();
    assert!(e.starts_with("permute:"), "{e}");
    let e = t.transpose(0, 2).unwrap_err().to_string();
    assert!(e.contains("axis 2 out of range"), "{e}");
    let e = t.squeeze(1).unwrap_err().to_string();
    assert!(e.starts_with("squeeze:"), "{e}");
    assert!(Tensor::from_vec(vec![1.0; 5], &[2, 3]).unwrap_err().to_string().contains("5 values"));
}

proptest! {
    #![proptest_config(cases())]

    /// A hand-made layout reaches a kernel only if every position it names lies inside the
    /// storage: `Tensor::from_storage` accepts exactly those (checked here by walking every
    /// index), and what it accepts reads back the named elements.
    #[test]
    fn hand_made_layouts_never_reach_past_their_storage(
        shape in shape(0..=3, 0..=4),
        strides in prop::collection::vec(0usize..12, 0..=3),
        offset in 0usize..20,
        len in 0usize..40,
        huge in any::<bool>(),
    ) {
        use tensor::{cpu::CpuStorage, Layout, Storage};
        let mut strides: Vec<usize> = strides.into_iter().take(shape.len()).collect();
        if huge && !strides.is_empty() {
            strides[0] = usize::MAX / 2; // positions that overflow
        }
        let data: Vec<f32> = (0..len).map(|i| i as f32).collect();
        let layout = Layout::from_parts(shape.clone(), strides.clone(), offset);
        // An empty layout reads nothing, but its offset must still lie within the storage.
        let fits = strides.len() == shape.len() && (!shape.contains(&0) || offset <= len) && {
            let mut ok = true;
            for_each_index(&shape, |i| {
                let pos = i.iter().zip(&strides).try_fold(offset, |p, (&i, &s)| p.checked_add(i.checked_mul(s)?));
                ok &= pos.is_some_and(|p| p < len);
            });
            ok
        };
        let made = Tensor::from_storage(Storage::Cpu(CpuStorage::new(data)), layout);
        prop_assert_eq!(made.is_ok(), fits, "shape {:?} strides {:?} offset {} len {}", shape, strides, offset, len);
        if let Ok(t) = made {
            let got = t.to_vec().unwrap();
            let mut k = 0;
            for_each_index(&shape, |i| {
                let pos = offset + i.iter().zip(&strides).map(|(i, s)| i * s).sum::<usize>();
                assert_eq!(got[k], pos as f32);
                k += 1;
            });
        }
    }
}
