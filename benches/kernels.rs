//! The int8 product alone, its weights resident in L2, so the figure is the
//! kernel's arithmetic and not the memory system's, and moves little with the
//! neighbours.
//!
//! - `int8_product/per_block_416/{rows}`: a 416 → 1,664 projection (half of
//!   Moonshine's up-projection, 692 KB of int8), one scale per block, as Moonshine.
//! - `int8_product/wide_576/{rows}`: a 576 → 1,024 projection (590 KB), one scale
//!   per six blocks, as the LLM.
//!
//! `forward_rows_here` on `rows` input rows; the throughput line is rows/s, so the
//! batch-8 per-row cost is its time / 8.
//!
//! Run: `cargo bench --bench kernels`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hearken::kernels::{Int8Linear, Scaling};

/// Name, input width, output width, scaling.
const PRODUCTS: [(&str, usize, usize, Scaling); 2] = [
    ("per_block_416", 416, 1_664, Scaling::PerBlock),
    ("wide_576", 576, 1_024, Scaling::Wide),
];

/// Deterministic values spread over [-1, 1).
fn values(len: usize, seed: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7_919 + seed * 104_729) % 2_003) as f32 / 1_001.5 - 1.0)
        .collect()
}

fn int8_product(c: &mut Criterion) {
    let mut group = c.benchmark_group("int8_product");
    for (name, width, out, scaling) in PRODUCTS {
        let linear = Int8Linear::from_rows(&values(out * width, 1), out, width, scaling);
        for rows in [1usize, 8] {
            let input = values(rows * width, 2);
            group.throughput(Throughput::Elements(rows as u64));
            group.bench_with_input(BenchmarkId::new(name, rows), &input, |b, input| {
                b.iter(|| linear.forward_rows_here(input, rows))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, int8_product);
criterion_main!(benches);
