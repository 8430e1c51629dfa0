//! The int8 kernels against each other and against f32.

use super::*;

fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        })
        .collect()
}

const SCALINGS: [Scaling; 2] = [Scaling::PerBlock, Scaling::Wide];

#[test]
fn a_wide_span_is_the_widest_even_divisor_up_to_eight() {
    assert_eq!(Scaling::Wide.span(18), 6); // 576 wide: SmolLM2's hidden size
    assert_eq!(Scaling::Wide.span(48), 8); // 1536: its MLP
    assert_eq!(Scaling::Wide.span(26), 2);
    assert_eq!(Scaling::Wide.span(13), 1); // odd: one scale per block
    assert_eq!(Scaling::PerBlock.span(48), 1);
}

#[test]
fn products_match_f32_within_quantization_error() {
    let (out, width, rows) = (70, 576, 5);
    let weights = pseudo_random(out * width, 7);
    let input = pseudo_random(rows * width, 11);
    for scaling in SCALINGS {
        let linear = Int8Linear::from_rows(&weights, out, width, scaling);
        let x = Tensor::from_vec(input.clone(), (rows, width), &Device::Cpu).unwrap();
        let y: Vec<Vec<f32>> = linear.forward(&x).unwrap().to_vec2().unwrap();
        for r in 0..rows {
            for c in 0..out {
                let exact: f32 = (0..width)
                    .map(|i| input[r * width + i] * weights[c * width + i])
                    .sum();
                assert!(
                    (y[r][c] - exact).abs() < 0.05,
                    "{scaling:?}, row {r} col {c}: {} vs {exact}",
                    y[r][c]
                );
            }
        }
    }
}

#[test]
fn a_row_comes_out_the_same_whatever_shares_the_call() {
    let (out, width) = (130, 192);
    let weights = pseudo_random(out * width, 7);
    let input = pseudo_random(7 * width, 3);
    for scaling in SCALINGS {
        let linear = Int8Linear::from_rows(&weights, out, width, scaling);
        let all = Tensor::from_vec(input.clone(), (7, width), &Device::Cpu).unwrap();
        let together: Vec<Vec<f32>> = linear.forward(&all).unwrap().to_vec2().unwrap();
        for r in 0..7 {
            let one = Tensor::from_vec(
                input[r * width..(r + 1) * width].to_vec(),
                (1, width),
                &Device::Cpu,
            )
            .unwrap();
            let alone: Vec<Vec<f32>> = linear.forward(&one).unwrap().to_vec2().unwrap();
            assert_eq!(alone[0], together[r], "{scaling:?}, row {r}");
        }
    }
}

/// Every kernel this CPU has against the portable one, for one scale per block
/// (an odd block count included) and wide spans, column counts that leave a
/// partial tile and a partial task, and row counts across several row groups:
/// AVX-512 to the bit, AVX2 (another summation order) within rounding.
#[cfg(target_arch = "x86_64")]
#[test]
fn each_x86_kernel_matches_the_portable_one() {
    for (blocks, span) in [(13, 1), (24, 2), (24, 6), (24, 8), (18, 6)] {
        let width = blocks * BLOCK;
        for out in [1, 16, 37, 130] {
            let values = pseudo_random(out * width, 5 + out as u32);
            let product = |kernel: Kernel, input: &[f32], rows: usize| {
                Int8Linear::for_kernel(&values, out, width, span, kernel)
                    .forward_rows_here(input, rows)
            };
            for rows in [1, 3, ROW_GROUP, ROW_GROUP + 1, 2 * ROW_GROUP + 3] {
                let input = pseudo_random(rows * width, 9 + rows as u32);
                let portable = product(Kernel::Portable, &input, rows);
                if avx512::available() {
                    let tiled = product(Kernel::Avx512, &input, rows);
                    assert_eq!(tiled, portable, "avx512, span {span}, {out}x{rows}");
                }
                if avx2::available() {
                    let avx2 = product(Kernel::Avx2, &input, rows);
                    for (a, b) in avx2.iter().zip(&portable) {
                        assert!(
                            (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                            "avx2, span {span}, {out}x{rows}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }
}

/// The AVX2 quantizer against the portable one, to the bit: values whose scaled
/// product falls exactly halfway (ties go to even), zero spans, and span widths of
/// one, two and eight blocks.
#[cfg(target_arch = "x86_64")]
#[test]
fn the_avx2_quantizer_matches_the_portable_one() {
    if !avx2::available() {
        return;
    }
    for span in [1, 2, 8] {
        let width = 8 * BLOCK;
        let mut values = pseudo_random(3 * width, 17 + span as u32);
        // A span of 127 with halves: 0.5 → 0, 1.5 → 2, 2.5 → 2, -0.5 → 0, -1.5 → -2.
        values[..5].copy_from_slice(&[127.0, 0.5, 1.5, 2.5, -1.5]);
        values[5] = -0.5;
        values[width..2 * width].fill(0.0);
        let expect = quantize_here(&values, width, span);
        let got = quantize(&values, width, span);
        assert_eq!(got.quants, expect.quants, "span {span}");
        assert_eq!(got.scales, expect.scales, "span {span}");
        assert_eq!(&got.quants[..6], &[127, 0, 2, 2, -2, 0]);
    }
}
