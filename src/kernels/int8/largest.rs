//! A greedy decoder's choice straight from the product: the largest column of each
//! row of `x · Wᵀ`, found task by task without writing the whole product out.
//! Moonshine's logits are 32,768 columns, 1 MB at batch 8: allocated, zeroed and
//! faulted in anew on every step (the server's mmap threshold is 128 KiB), only to be
//! scanned once.

use super::{Int8Linear, COLUMNS_PER_TASK};
use crate::kernels::maxima::largest_by;

impl Int8Linear {
    /// Per input row, the index of its largest output column: the first of equal
    /// largest values, NaN never winning, `None` if every value is NaN. The same
    /// choice as scanning each row of [`forward_rows_here`](Self::forward_rows_here)'s
    /// result, on the calling thread alone.
    pub fn largest_columns_here(&self, input: &[f32], rows: usize) -> Vec<Option<usize>> {
        let quantized = self.quantize_rows(input, rows);
        let mut best = vec![(f32::NEG_INFINITY, None); rows];
        let mut stripe = vec![0f32; COLUMNS_PER_TASK * rows.max(1)];
        for first in (0..self.out).step_by(COLUMNS_PER_TASK) {
            let columns = COLUMNS_PER_TASK.min(self.out - first);
            self.product_columns(first, columns, &quantized.input, rows, &mut stripe);
            for (row, (value, index)) in best.iter_mut().enumerate() {
                let values = &stripe[row * COLUMNS_PER_TASK..][..columns];
                let top = largest_by(values, *value, |v| v);
                // Only a strictly larger value moves the choice, so the first of
                // equals stays; until a row has any, -inf counts too.
                if top > *value || index.is_none() {
                    if let Some(at) = values.iter().position(|&v| v == top) {
                        (*value, *index) = (top, Some(first + at));
                    }
                }
            }
        }
        best.into_iter().map(|(_, index)| index).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::Scaling;
    use super::*;

    fn scan(row: &[f32]) -> Option<usize> {
        let max = largest_by(row, f32::NEG_INFINITY, |v| v);
        row.iter().position(|&v| v == max)
    }

    #[test]
    fn the_choice_is_the_full_products_first_largest_column() {
        // 300 columns: four full tasks and a partial one. Rows 0 and 1 are equal, so
        // their products tie column for column; the weights repeat every 100 columns,
        // so every row's largest value appears three times and the first must win.
        let (out, width, rows) = (300, 64, 11);
        let base: Vec<f32> = (0..100 * width)
            .map(|i| ((i * 7919) % 211) as f32 / 105.0 - 1.0)
            .collect();
        let weights: Vec<f32> = base.iter().cycle().take(out * width).copied().collect();
        let mut input: Vec<f32> = (0..rows * width)
            .map(|i| ((i * 104_729) % 97) as f32 / 48.0 - 1.0)
            .collect();
        input.copy_within(0..width, width);
        for scaling in [Scaling::PerBlock, Scaling::Wide] {
            let linear = Int8Linear::from_rows(&weights, out, width, scaling);
            let full = linear.forward_rows_here(&input, rows);
            let expect: Vec<Option<usize>> = full.chunks_exact(out).map(scan).collect();
            assert!(expect.iter().all(|c| c.is_some_and(|c| c < 100)));
            assert_eq!(linear.largest_columns_here(&input, rows), expect);
        }
    }
}
