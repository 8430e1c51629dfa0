//! Int8 linear layers built for batches: the embedded model's matrix products.
//!
//! Weights are int8 in blocks of 32 signed bytes; one f32 scale covers one block
//! ([`Scaling::PerBlock`], as Q8_0) or a span of up to eight ([`Scaling::Wide`], as
//! llama.cpp's Q8_K); each input row is quantized the same way. candle's kernel dots one input row
//! with one weight row at a time and converts both blocks' f16 scales on every call:
//! profiled at batch 8, 64 % of a pass was that dot and 15 % the scale conversions,
//! so eight sequences cost nearly eight times one. Here each weight block is loaded
//! once and dotted with the same block of every input row while it sits in registers,
//! scales are f32 from the start, and rows are independent: a row's result does not
//! depend on which other rows share the call (the batcher relies on that).

use candle_core::quantized::QTensor;
use candle_core::{Device, Tensor};
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::int8_x86::{avx2, avx512, avx512::TILE};

mod largest;

/// Values per block (as Q8_0).
pub(super) const BLOCK: usize = 32;

/// Input rows handled together per weight block (accumulators kept in registers).
pub(super) const ROW_GROUP: usize = 8;

/// Output columns per parallel work item (a whole number of AVX-512 tiles).
const COLUMNS_PER_TASK: usize = 64;
#[cfg(target_arch = "x86_64")]
const _: () = assert!(COLUMNS_PER_TASK.is_multiple_of(TILE));

/// Most blocks one scale covers ([`Scaling::Wide`]): 256 values, as llama.cpp's Q8_K.
const MAX_SPAN: usize = 8;

/// How many values share one scale, in weights and inputs alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scaling {
    /// One scale per block of 32 (Q8_0): the closest fit, and every product pays for
    /// its block's scale (a convert and two float operations per 64 products on
    /// AVX-512).
    PerBlock,
    /// One scale per span of up to 256 values (the widest even number of blocks, at
    /// most eight, that divides the row): the integer sums run across the span and
    /// the scales are applied once per span, about half the kernel's work per product
    /// on AVX-512. Coarser where a span mixes small and large values.
    Wide,
}

impl Scaling {
    /// Blocks per scale for a row of `blocks` blocks: 1, or an even divisor of
    /// `blocks` (the AVX-512 kernel takes blocks in pairs).
    fn span(self, blocks: usize) -> usize {
        match self {
            Scaling::PerBlock => 1,
            Scaling::Wide => (2..=MAX_SPAN)
                .rev()
                .step_by(2)
                .find(|span| blocks.is_multiple_of(*span))
                .unwrap_or(1),
        }
    }
}

/// A `[out, in]` weight matrix in int8 blocks.
pub struct Int8Linear {
    out: usize,
    blocks: usize,
    /// Blocks per scale (see [`Scaling`]).
    span: usize,
    weights: Weights,
    kernel: Kernel,
}

/// The weights as the kernel reads them.
enum Weights {
    /// Row after row (one output column's blocks), one scale per span: the portable
    /// and AVX2 kernels, which dot one column with a group of input rows.
    Rows { quants: Vec<i8>, scales: Vec<f32> },
    /// Sixteen columns interleaved (AVX-512, see `avx512::Tiles`).
    #[cfg(target_arch = "x86_64")]
    Tiles(avx512::Tiles),
}

/// Input rows quantized once, for one or more products of their width and scaling.
pub struct Int8Rows {
    input: Input,
    rows: usize,
    width: usize,
    span: usize,
}

/// Rows quantized to int8 blocks.
struct QuantizedRows {
    quants: Vec<i8>,
    scales: Vec<f32>,
}

/// The dot kernel this CPU runs, chosen once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernel {
    Portable,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Kernel {
    fn chosen() -> Kernel {
        static CHOSEN: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                if avx512::available() {
                    return Kernel::Avx512;
                }
                if avx2::available() {
                    return Kernel::Avx2;
                }
            }
            Kernel::Portable
        })
    }
}

/// Quantized input rows as `kernel` reads them.
struct Input {
    rows: QuantizedRows,
    /// AVX-512 only: `128 · Σ x` per span of each row (`avx512::offset_sums`).
    offsets: Vec<i32>,
    kernel: Kernel,
}

impl Input {
    fn new(values: &[f32], width: usize, span: usize, kernel: Kernel) -> Self {
        let rows = quantize(values, width, span);
        let offsets = match kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => avx512::offset_sums(&rows.quants, span * BLOCK),
            _ => Vec::new(),
        };
        Input {
            rows,
            offsets,
            kernel,
        }
    }
}

impl Int8Linear {
    /// Re-encodes a quantized GGUF weight (any block format) as int8 blocks. The
    /// width must be a multiple of 32, as every llama projection is.
    pub fn from_qtensor(weight: &QTensor, scaling: Scaling) -> candle_core::Result<Self> {
        let (out, width) = weight.shape().dims2()?;
        if width % BLOCK != 0 {
            candle_core::bail!(
                "int8 weights need a width that is a multiple of {BLOCK}, got {width}"
            );
        }
        let values: Vec<f32> = weight.dequantize(&Device::Cpu)?.flatten_all()?.to_vec1()?;
        Ok(Self::from_rows(&values, out, width, scaling))
    }

    /// Quantizes a float `[out, width]` matrix given row by row. `width` must be a
    /// multiple of 32.
    pub fn from_rows(values: &[f32], out: usize, width: usize, scaling: Scaling) -> Self {
        assert!(
            width.is_multiple_of(BLOCK) && values.len() == out * width,
            "int8 weights need [out, width] values with a width that is a multiple of {BLOCK}"
        );
        let span = scaling.span(width / BLOCK);
        Self::for_kernel(values, out, width, span, Kernel::chosen())
    }

    /// [`from_rows`](Self::from_rows) with `span` blocks per scale, laid out for
    /// `kernel`.
    fn for_kernel(values: &[f32], out: usize, width: usize, span: usize, kernel: Kernel) -> Self {
        let blocks = width / BLOCK;
        let rows = quantize(values, width, span);
        let weights = match kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => Weights::Tiles(avx512::Tiles::new(
                &rows.quants,
                &rows.scales,
                out,
                width,
                blocks / span,
            )),
            _ => Weights::Rows {
                quants: rows.quants,
                scales: rows.scales,
            },
        };
        Int8Linear {
            out,
            blocks,
            span,
            weights,
            kernel,
        }
    }

    /// Output width.
    pub fn out_features(&self) -> usize {
        self.out
    }

    /// Input width.
    pub fn in_features(&self) -> usize {
        self.blocks * BLOCK
    }

    /// `x · Wᵀ` for `x` of `[rows, in]`: `[rows, out]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (rows, width) = x.dims2()?;
        if width != self.blocks * BLOCK {
            candle_core::bail!(
                "input width {width} does not match weights {}",
                self.blocks * BLOCK
            );
        }
        let input: Vec<f32> = x.flatten_all()?.to_vec1()?;
        let result = self.forward_rows(&input, rows);
        Tensor::from_vec(result, (rows, self.out), x.device())
    }

    /// `x · Wᵀ` for `rows` input rows laid end to end: `rows × out` values, columns
    /// split across the shared matmul pool.
    pub fn forward_rows(&self, input: &[f32], rows: usize) -> Vec<f32> {
        self.forward_rows_with(input, rows, true)
    }

    /// [`forward_rows`](Self::forward_rows) on the calling thread alone: for a model
    /// thread whose passes must not queue behind other models' work in the shared pool.
    pub fn forward_rows_here(&self, input: &[f32], rows: usize) -> Vec<f32> {
        self.forward_rows_with(input, rows, false)
    }

    /// Quantizes `rows` input rows once for this product and any other of the same
    /// input width and [`Scaling`] (a layer's query, key and value projections read the
    /// same rows).
    pub fn quantize_rows(&self, input: &[f32], rows: usize) -> Int8Rows {
        let width = self.blocks * BLOCK;
        assert_eq!(
            input.len(),
            rows * width,
            "input is not {rows} rows of {width}"
        );
        Int8Rows {
            input: Input::new(input, width, self.span, self.kernel),
            rows,
            width,
            span: self.span,
        }
    }

    /// `x · Wᵀ` for rows from [`quantize_rows`](Self::quantize_rows) of this product
    /// or one of the same width and scaling, columns split across the matmul pool.
    pub fn forward_quantized(&self, rows: &Int8Rows) -> Vec<f32> {
        self.forward_quantized_with(rows, true)
    }

    /// [`forward_quantized`](Self::forward_quantized) on the calling thread alone.
    pub fn forward_quantized_here(&self, rows: &Int8Rows) -> Vec<f32> {
        self.forward_quantized_with(rows, false)
    }

    fn forward_quantized_with(&self, rows: &Int8Rows, parallel: bool) -> Vec<f32> {
        assert!(
            rows.width == self.blocks * BLOCK && rows.span == self.span,
            "rows quantized for another width or scaling"
        );
        self.product(&rows.input, rows.rows, parallel)
    }

    fn forward_rows_with(&self, input: &[f32], rows: usize, parallel: bool) -> Vec<f32> {
        let quantized = self.quantize_rows(input, rows);
        self.product(&quantized.input, rows, parallel)
    }

    /// Columns split into tasks of [`COLUMNS_PER_TASK`]; each task writes its columns
    /// of every row into a stripe (row-major), copied into place. In parallel each task
    /// has its own stripe; on the calling thread alone one small stripe serves every
    /// task in turn, so a wide product (Moonshine's logits: 1 MB at batch 8) is not
    /// allocated, zeroed and faulted in twice.
    fn product(&self, input: &Input, rows: usize, parallel: bool) -> Vec<f32> {
        assert_eq!(
            input.kernel, self.kernel,
            "rows quantized for another kernel"
        );
        let tasks = self.out.div_ceil(COLUMNS_PER_TASK);
        let stripe_len = COLUMNS_PER_TASK * rows.max(1);
        let columns_of = |task: usize| {
            let first = task * COLUMNS_PER_TASK;
            (first, COLUMNS_PER_TASK.min(self.out - first))
        };
        let mut result = vec![0f32; rows * self.out];
        let mut place = |task: usize, stripe: &[f32]| {
            let (first, columns) = columns_of(task);
            for row in 0..rows {
                let from = &stripe[row * COLUMNS_PER_TASK..row * COLUMNS_PER_TASK + columns];
                result[row * self.out + first..][..columns].copy_from_slice(from);
            }
        };
        // A pool of one thread would only take the work from this one: handing it
        // over and waiting costs two context switches per product, 200 per LLM pass.
        if parallel && rayon::current_num_threads() > 1 {
            let mut stripes = vec![0f32; tasks * stripe_len];
            stripes
                .par_chunks_mut(stripe_len)
                .enumerate()
                .for_each(|(task, stripe)| {
                    let (first, columns) = columns_of(task);
                    self.product_columns(first, columns, input, rows, stripe);
                });
            for (task, stripe) in stripes.chunks(stripe_len).enumerate() {
                place(task, stripe);
            }
        } else {
            let mut stripe = vec![0f32; stripe_len];
            for task in 0..tasks {
                let (first, columns) = columns_of(task);
                self.product_columns(first, columns, input, rows, &mut stripe);
                place(task, &stripe);
            }
        }
        result
    }

    /// Columns `first..first + columns` of every row into `stripe`
    /// (`rows × COLUMNS_PER_TASK`, row-major).
    fn product_columns(
        &self,
        first: usize,
        columns: usize,
        input: &Input,
        rows: usize,
        stripe: &mut [f32],
    ) {
        let (blocks, span) = (self.blocks, self.span);
        let (width, spans) = (blocks * BLOCK, blocks / span);
        let mut row = 0;
        while row < rows {
            let group = ROW_GROUP.min(rows - row);
            let quants = &input.rows.quants[row * width..(row + group) * width];
            let input_scales = &input.rows.scales[row * spans..(row + group) * spans];
            let out = &mut stripe[row * COLUMNS_PER_TASK..];
            match &self.weights {
                #[cfg(target_arch = "x86_64")]
                Weights::Tiles(tiles) => {
                    let offsets = &input.offsets[row * spans..(row + group) * spans];
                    for tile in first / TILE..(first + columns).div_ceil(TILE) {
                        let tile_quants = &tiles.quants[tile * width * TILE..][..width * TILE];
                        let tile_scales = &tiles.scales[tile * spans * TILE..][..spans * TILE];
                        let out = &mut out[tile * TILE - first..];
                        // SAFETY: tiled weights exist only for `Kernel::Avx512`, chosen
                        // after checking the CPU; each slice holds what `dot_tile` asks
                        // for `group` rows, and `out` `(group - 1)` stripe rows plus a
                        // tile (`first` and the tile both sit inside this stripe).
                        unsafe {
                            avx512::dot_tile_rows(
                                group,
                                tile_quants,
                                tile_scales,
                                quants,
                                input_scales,
                                offsets,
                                blocks,
                                span,
                                out,
                                COLUMNS_PER_TASK,
                            )
                        }
                    }
                }
                Weights::Rows { quants: w, scales } => {
                    for column in first..first + columns {
                        let weights = &w[column * width..(column + 1) * width];
                        let scales = &scales[column * spans..(column + 1) * spans];
                        let mut results = [0f32; ROW_GROUP];
                        let results = &mut results[..group];
                        let dot: DotGroup = match self.kernel {
                            #[cfg(target_arch = "x86_64")]
                            Kernel::Avx2 => avx2::dot_group,
                            _ => dot_group_portable,
                        };
                        // SAFETY: `Kernel::chosen` picked AVX2 after checking the CPU
                        // (the portable kernel needs nothing); the slices hold `blocks`
                        // blocks and their scales per row for `group` rows.
                        unsafe {
                            dot(weights, scales, quants, input_scales, blocks, span, results)
                        };
                        for (r, value) in results.iter().enumerate() {
                            out[r * COLUMNS_PER_TASK + column - first] = *value;
                        }
                    }
                }
            }
            row += group;
        }
    }
}

/// A kernel dotting one weight row (`blocks` blocks, one scale per `span`) with a
/// group of input rows: weights, their scales, inputs, their scales, blocks, span,
/// one result per row.
type DotGroup = unsafe fn(&[i8], &[f32], &[i8], &[f32], usize, usize, &mut [f32]);

/// Quantizes rows of `width` values into int8 blocks: each span of `span` blocks
/// scaled by its largest magnitude / 127, rounded to nearest (ties to even).
fn quantize(values: &[f32], width: usize, span: usize) -> QuantizedRows {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        let len = span * BLOCK;
        debug_assert!(values.len().is_multiple_of(width) && width.is_multiple_of(len));
        let mut quants = vec![0i8; values.len()];
        let mut scales = vec![0f32; values.len() / len];
        // SAFETY: the CPU has AVX2 (checked just above); `len` is whole blocks that
        // divide every row, and the outputs are sized for `values`.
        unsafe { avx2::quantize(values, len, &mut quants, &mut scales) };
        return QuantizedRows { quants, scales };
    }
    quantize_here(values, width, span)
}

fn quantize_here(values: &[f32], width: usize, span: usize) -> QuantizedRows {
    let len = span * BLOCK;
    debug_assert!(values.len().is_multiple_of(width) && width.is_multiple_of(len));
    let mut quants = vec![0i8; values.len()];
    let mut scales = vec![0f32; values.len() / len];
    for ((chunk, quants), scale) in values
        .chunks_exact(len)
        .zip(quants.chunks_exact_mut(len))
        .zip(&mut scales)
    {
        let max = super::maxima::largest_by(chunk, 0.0, f32::abs);
        *scale = max / 127.0;
        let inverse = if max == 0.0 { 0.0 } else { 1.0 / *scale };
        for (q, v) in quants.iter_mut().zip(chunk) {
            *q = (v * inverse).round_ties_even() as i8;
        }
    }
    QuantizedRows { quants, scales }
}

/// The portable kernel (and the reference the x86 kernels are tested against). Sums
/// each span in integers, then adds it scaled with one rounding (`mul_add`), in span
/// order: the AVX-512 kernel's arithmetic exactly; AVX2's lane sums differ in order.
fn dot_group_portable(
    weights: &[i8],
    scales: &[f32],
    inputs: &[i8],
    input_scales: &[f32],
    blocks: usize,
    span: usize,
    out: &mut [f32],
) {
    let (len, spans) = (span * BLOCK, blocks / span);
    for (r, result) in out.iter_mut().enumerate() {
        let row = &inputs[r * blocks * BLOCK..(r + 1) * blocks * BLOCK];
        let mut sum = 0f32;
        for s in 0..spans {
            let dot: i32 = weights[s * len..(s + 1) * len]
                .iter()
                .zip(&row[s * len..(s + 1) * len])
                .map(|(a, b)| i32::from(*a) * i32::from(*b))
                .sum();
            sum = (dot as f32).mul_add(scales[s] * input_scales[r * spans + s], sum);
        }
        *result = sum;
    }
}

#[cfg(test)]
mod tests;
