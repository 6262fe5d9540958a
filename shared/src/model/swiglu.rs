//! The MLP's gate, `silu(gate) * up`, fused into one pass on the CPU backend.
//!
//! Burn's CPU backend computes `silu` one element at a time with the C library's `expf`, on one
//! thread, and then multiplies in a second pass: about a sixth of direction extraction on the
//! 0.5B model. On that backend this module runs one loop over both inputs with a polynomial
//! `exp` the compiler vectorises (eight lanes with AVX2, detected at run time). Every other
//! device keeps Burn's kernels. The polynomial and the lane width change no result: `exp` is
//! within 2 ulp of the exact value, and the wide and narrow loops give the same bits (Rust
//! does not fuse multiply-adds on its own), so the browser's CPU fallback and the native
//! server agree.

use burn::tensor::activation::silu;
use burn::tensor::{DType, DataError, Device, Tensor};

/// `silu(gate) * up`, element by element.
///
/// # Shapes
/// - `gate`, `up`: `[batch, seq, d_ff]` → same
pub fn swiglu(gate: Tensor<3>, up: Tensor<3>) -> Tensor<3> {
    let device = gate.device();
    if device != Device::flex() || gate.dtype() != DType::F32 || up.dtype() != DType::F32 {
        return silu(gate) * up;
    }
    assert_eq!(gate.dims(), up.dims(), "swiglu: gate and up shapes differ");
    // On the CPU backend both reads and the write back hand over the buffers without copying.
    let (mut out, up) = (gate.into_data(), up.into_data());
    gate_in_place(f32_slice(out.as_mut_slice()), f32_slice(up.as_slice()));
    Tensor::from_data(out, &device)
}

fn f32_slice<S>(values: Result<S, DataError>) -> S {
    values.unwrap_or_else(|e| unreachable!("f32 tensor data read as f32: {e:?}"))
}

/// `gate[i] <- silu(gate[i]) * up[i]`, with the widest vectors this CPU has.
fn gate_in_place(gate: &mut [f32], up: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        unsafe { gate_avx2(gate, up) };
        return;
    }
    gate_portable(gate, up);
}

/// [`gate_portable`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn gate_avx2(gate: &mut [f32], up: &[f32]) {
    gate_portable(gate, up);
}

#[inline(always)]
fn gate_portable(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + exp(-*g)) * u;
    }
}

/// `e^x` within 2 ulp (Cephes' `expf` polynomial), branch-free so that loops vectorise.
/// Arguments are clamped to `[-87, 88]`, where `e^x` stays a normal float. The gate does not
/// notice: for `g > 87`, `silu(g)` is `g` to the last bit either way, and for `g < -88` it
/// becomes `g / e^88` instead of the even smaller `g e^g`.
#[inline(always)]
fn exp(x: f32) -> f32 {
    // ln 2 in two parts: `n * LN2_HI` is exact for the exponents that occur.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding it and taking it away rounds to the nearest integer.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    // `n` as an integer is the difference of the two floats' bits (they share an exponent),
    // which vectorises where a float-to-int cast does not.
    let k = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    e * f32::from_bits(((k + 127) << 23) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::read_f32;
    use burn::tensor::TensorData;

    #[test]
    fn exp_is_within_two_ulp_of_f64_exp() {
        let mut worst = 0.0f64;
        for i in 0..=1_750_000 {
            let x = -87.0 + i as f32 * 1e-4;
            let exact = (x as f64).exp();
            worst = worst.max(((exp(x) as f64) - exact).abs() / exact);
        }
        // One f32 ulp is at most 2^-23 ≈ 1.19e-7 of the value.
        assert!(
            worst <= 2.0 * f32::EPSILON as f64,
            "worst relative error {worst:e}"
        );
    }

    #[test]
    fn fused_gate_equals_burns_silu_times_up() {
        let device = Device::flex();
        let n = 3 * 5 * 97;
        // Values over the range a gate projection produces, plus the clamp's far side.
        let mut gate: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 2001) as f32 / 50.0 - 20.0)
            .collect();
        gate[..4].copy_from_slice(&[-120.0, -88.5, 95.0, 0.0]);
        let up: Vec<f32> = (0..n)
            .map(|i| ((i * 104_729) % 1001) as f32 / 250.0 - 2.0)
            .collect();
        let tensor =
            |v: &[f32]| Tensor::<3>::from_data(TensorData::new(v.to_vec(), [3, 5, 97]), &device);
        let fused = read_f32(swiglu(tensor(&gate), tensor(&up)));
        let reference = read_f32(silu(tensor(&gate)) * tensor(&up));
        for (i, (f, r)) in fused.iter().zip(&reference).enumerate() {
            let tolerance = 4.0 * f32::EPSILON * r.abs() + 1e-30;
            assert!(
                (f - r).abs() <= tolerance,
                "element {i}: fused {f}, Burn {r}"
            );
        }
    }

    #[test]
    fn wide_and_portable_loops_give_the_same_bits() {
        let gate: Vec<f32> = (0..1003).map(|i| (i as f32 - 500.0) / 17.0).collect();
        let up: Vec<f32> = (0..1003).map(|i| 1.0 + i as f32 / 1003.0).collect();
        let mut wide = gate.clone();
        gate_in_place(&mut wide, &up);
        let mut portable = gate;
        gate_portable(&mut portable, &up);
        assert_eq!(
            wide.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            portable.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn nan_stays_nan() {
        let mut gate = vec![f32::NAN, 1.0];
        gate_in_place(&mut gate, &[1.0, f32::NAN]);
        assert!(gate[0].is_nan() && gate[1].is_nan());
    }
}
