//! The int8 layouts' rounding, and the attention's agreement with float rows and
//! between its two paths.

use super::super::attention::attend_rows;
use super::*;

fn wave(seed: f32, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (i as f32 * 0.37 + seed).sin() * 0.8)
        .collect()
}

#[test]
fn runs_round_to_within_half_a_step_and_zero_runs_stay_zero() {
    let mut values = wave(0.3, 2 * FRAME_BLOCK);
    values[FRAME_BLOCK..].fill(0.0);
    let (quants, scales) = quantize_runs(&values);
    assert_eq!(scales[1], 0.0);
    assert!(quants[FRAME_BLOCK..].iter().all(|&q| q == 0));
    for (v, q) in values.iter().zip(&quants).take(FRAME_BLOCK) {
        assert!((v - scales[0] * f32::from(*q)).abs() <= scales[0] / 2.0 + 1e-7);
    }
}

/// A key comes back within half a step of its frame's scale, wherever the layout
/// puts it, and dimensions past the head's hold zero.
#[test]
fn keys_round_to_within_half_a_step_in_their_place() {
    let (frames, head_dim, heads) = (19, 6, 2);
    let keys = wave(0.7, frames * head_dim * heads);
    let (quants, scales) = quantize_keys(&keys, frames, head_dim);
    let groups = head_dim.div_ceil(DIM_GROUP);
    let padded = frames.div_ceil(KEY_BLOCK) * KEY_BLOCK;
    for frame in 0..frames {
        for head in 0..heads {
            let scale = scales[head * padded + frame];
            for dim in 0..groups * DIM_GROUP {
                let block = head * padded / KEY_BLOCK + frame / KEY_BLOCK;
                let at = ((block * groups + dim / DIM_GROUP) * KEY_BLOCK + frame % KEY_BLOCK)
                    * DIM_GROUP
                    + dim % DIM_GROUP;
                let stored = i32::from(quants[at]) - KEY_OFFSET;
                let want = if dim < head_dim {
                    keys[(frame * heads + head) * head_dim + dim]
                } else {
                    0.0
                };
                assert!((want - scale * stored as f32).abs() <= scale / 2.0 + 1e-7);
            }
        }
    }
}

/// The int8 cross-attention agrees with plain row-major attention over float
/// keys and values to within what the rounding allows.
#[test]
fn attends_as_rows_do() {
    let (frames, head_dim, heads) = (77, 52, 3);
    let width = head_dim * heads;
    let (keys, values, query) = (
        wave(1.0, frames * width),
        wave(2.0, frames * width),
        wave(3.0, width),
    );
    let mut scratch = Vec::new();
    let mut by_rows = vec![0f32; width];
    attend_rows(
        &query,
        &keys,
        &values,
        frames,
        head_dim,
        &mut scratch,
        &mut by_rows,
    );
    let mut by_cache = vec![0f32; width];
    CrossCache::new(&keys, &values, frames, head_dim).attend(&query, &mut scratch, &mut by_cache);
    for (a, b) in by_rows.iter().zip(&by_cache) {
        assert!((a - b).abs() < 0.01, "{a} vs {b}");
    }
}

/// The intrinsics path (VNNI scores, value sums in groups) sums as the portable
/// one does: the same result bit for bit, over sizes that leave every kind of
/// remainder (a partial block of frames, dimensions past a group).
#[test]
fn both_paths_give_the_same_result() {
    for (frames, head_dim, heads) in [(45, 52, 2), (225, 52, 1), (7, 6, 3), (32, 10, 2)] {
        let width = head_dim * heads;
        let cache = CrossCache::new(
            &wave(0.5, frames * width),
            &wave(1.5, frames * width),
            frames,
            head_dim,
        );
        let query = wave(2.5, width);
        let mut scratch = Vec::new();
        let mut portable = vec![0f32; width];
        cache.attend_here(&query, &mut scratch, &mut portable);
        let mut chosen = vec![0f32; width];
        cache.attend(&query, &mut scratch, &mut chosen);
        assert_eq!(portable, chosen, "{frames} frames, {head_dim} dims");
        let value_runs = width * frames.div_ceil(FRAME_BLOCK);
        let key_frames = heads * frames.div_ceil(KEY_BLOCK) * KEY_BLOCK;
        let key_bytes = key_frames * (head_dim.div_ceil(DIM_GROUP) * DIM_GROUP + 4);
        assert_eq!(cache.bytes(), value_runs * (FRAME_BLOCK + 4) + key_bytes);
    }
}
