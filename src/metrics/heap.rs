//! The allocator's own view of the heap, read at each scrape: what the program holds
//! (`hearken_heap_allocated_bytes`) and what the allocator keeps free without giving it
//! back to the system (`hearken_heap_free_bytes`). Beside the RSS they tell a leak (the
//! allocated bytes grow) from fragmentation (the free bytes grow). glibc only
//! (`mallinfo2`); elsewhere both stay 0.

use prometheus::{IntCounter, IntGauge, Registry};

pub struct HeapMetrics {
    allocated: IntGauge,
    free: IntGauge,
    /// Trims that returned free pages to the system (`crate::heap::release_free_pages`).
    pub trims: IntCounter,
}

impl HeapMetrics {
    pub fn new() -> Self {
        HeapMetrics {
            allocated: IntGauge::new(
                "hearken_heap_allocated_bytes",
                "Bytes the process holds from malloc (arenas and mmapped blocks), at the \
                 last scrape",
            )
            .expect("static metric definition"),
            free: IntGauge::new(
                "hearken_heap_free_bytes",
                "Free bytes the allocator keeps in its arenas without returning them to \
                 the system, at the last scrape",
            )
            .expect("static metric definition"),
            trims: IntCounter::new(
                "hearken_heap_trims_total",
                "Times free pages inside malloc's arenas were returned to the system",
            )
            .expect("static metric definition"),
        }
    }

    pub fn register(&self, registry: &Registry) {
        let _ = registry.register(Box::new(self.allocated.clone()));
        let _ = registry.register(Box::new(self.free.clone()));
        let _ = registry.register(Box::new(self.trims.clone()));
    }

    /// Read the allocator's figures (a walk over its arenas, each locked briefly).
    pub fn refresh(&self) {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            // SAFETY: mallinfo2 only reads the allocator's state, under its own locks.
            let info = unsafe { libc::mallinfo2() };
            self.allocated
                .set((info.uordblks + info.hblkhd).min(i64::MAX as usize) as i64);
            self.free.set(info.fordblks.min(i64::MAX as usize) as i64);
        }
    }
}

impl Default for HeapMetrics {
    fn default() -> Self {
        HeapMetrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_scrape_reads_the_allocator() {
        let heap = HeapMetrics::new();
        let held = std::hint::black_box(vec![7u8; 1 << 20]);
        heap.refresh();
        assert!(heap.allocated.get() >= held.len() as i64);
        assert!(heap.free.get() >= 0);
    }
}
