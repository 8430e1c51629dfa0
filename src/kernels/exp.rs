//! The exponential in plain arithmetic that the compiler vectorises. A call to libm's
//! `expf` per element cannot be vectorised: it was a third of the LLM's attention once
//! the scores were blocked; the SiLU gates and softmaxes of Moonshine's decoder made
//! ~20,000 such calls per token row of a 3-second segment (3 % of a batch-8 step), and
//! SmolLM2's gates ~46,000 per token.

/// e^x within ~2 ulp of libm's for x in [-87, 88]. Below -87 (results under 1e-38)
/// it gives ~1e-38; above 88 it gives e^88 (~1.7e38) rather than infinity.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 in two parts (Cody and Waite), so that x - n ln 2 loses nothing.
    const LN2_HIGH: f32 = 0.693_145_75;
    const LN2_LOW: f32 = 1.428_606_8e-6;
    // Adding and taking away 1.5 × 2^23 rounds to the nearest integer, in any vector width.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let n = (x * LOG2_E + ROUND) - ROUND;
    let r = (x - n * LN2_HIGH) - n * LN2_LOW;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2^n with n in [-126, 127]: a normal number's exponent field.
    f32::from_bits(((n as i32 + 127) as u32) << 23) * p
}

/// `x · σ(x)`, the gate of SmolLM2's and Moonshine's MLPs.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulp_distance(a: f32, b: f32) -> u32 {
        a.to_bits().abs_diff(b.to_bits())
    }

    #[test]
    fn agrees_with_libm_within_a_few_ulp_over_its_range() {
        let mut worst = 0u32;
        for i in 0..=1_750_000 {
            let x = -87.0 + i as f32 * 1e-4;
            worst = worst.max(ulp_distance(exp(x), x.exp()));
        }
        assert!(worst <= 4, "worst error {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn saturates_instead_of_overflowing() {
        assert!(exp(-1000.0) < 1e-37 && exp(-1000.0) > 0.0);
        assert!(exp(1000.0).is_finite() && exp(1000.0) > 1e38);
    }

    #[test]
    fn silu_matches_its_definition_and_its_limits() {
        for x in [-20.0f32, -3.5, -1.0, 0.0, 0.25, 2.0, 9.0] {
            let want = x / (1.0 + (-x).exp());
            assert!(
                (silu(x) - want).abs() <= 1e-6 * want.abs().max(1.0),
                "silu({x})"
            );
        }
        assert_eq!(silu(200.0), 200.0);
        assert!(silu(-200.0).abs() < 1e-35);
    }
}
