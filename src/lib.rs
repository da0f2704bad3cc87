//! permd: a sidecar policy decision point. It loads a snapshot of policy and facts, compiles
//! it into an immutable in-memory index, and answers "may this subject do this action on this
//! resource?" over HTTP (and gRPC) in microseconds.
//!
//! # Layout
//! - [`model`]: the snapshot document and delta batches (serde), validation. No I/O.
//! - [`index`]: the compiled index, `decide()` and queries. Pure and synchronous.
//! - [`store`]: the one `ArcSwap` holding the active index, and its version watch.
//! - [`sync`]: sources that produce snapshots and batches (file source), off the request path.
//! - [`api`]: HTTP adapter (hyper 1): decode, call the index, encode.
//! - `fuzzing`: the bodies of the fuzz targets in `fuzz/`, shared with `tests/fuzz_corpus.rs`.
//! - [`config`], [`cli`]: configuration (file, `PERMD_*` environment, flags) and commands.
//! - [`control`]: the control plane (`permd control`): PostgreSQL, the write path, the native
//!   protocol served to sidecars.
//! - [`urlmap`]: URL mapping rules (model.md §6), compiled per version, for `/allowed_url`,
//!   nginx `auth_request` and Envoy ext_authz.
//! - [`wire`]: what the sidecar's and the control plane's HTTP faces share (request errors).
//!
//! Data flows one way: source → model → index → store → APIs; on the control plane, API →
//! write path → database → change feed → sidecars.

pub mod api;
pub mod auth;
pub mod cli;
pub mod client;
pub mod cond;
pub mod config;
pub mod control;
pub mod decision_log;
#[doc(hidden)]
pub mod fuzzing;
pub mod index;
pub mod inject;
pub mod metrics;
pub mod model;
pub mod server;
pub mod store;
pub mod sync;
pub mod tls;
pub mod urlmap;
pub mod wire;

/// The settings the binaries compile into jemalloc (`_RJEM_MALLOC_CONF` in the environment
/// still overrides them). `thp:always`: jemalloc asks for transparent huge pages on the memory
/// it maps (the kernel's default mode, `madvise`, gives them only when asked). A big index
/// spreads a decision's handful of cache lines over as many 4 KiB pages; on 1M assignments
/// huge pages took about a fifth off the `decide` mix, which is what TLB misses had cost.
/// `narenas:2`: one arena per core of a sidecar's usual two instead of eight, so the partly
/// filled huge pages of idle arenas do not add up (the example snapshot: 12.9 MiB resident
/// with neither setting, 28 MiB with huge pages and eight arenas, about 16 MiB with both).
/// `background_thread:true,dirty_decay_ms:1000`: freed pages go back to the system from a
/// background thread about a second after they were freed. Without it jemalloc returns them
/// only when the program allocates or frees again, and a sidecar that has just dropped a
/// decoded snapshot and then sits idle kept the document's pages resident: on the 2M `tail`
/// snapshot 180 MiB over an empty one where the index's live heap is 90 MB.
/// Figures in bench/README.md.
pub const JEMALLOC_CONF: &[u8; 64] = b"thp:always,narenas:2,background_thread:true,dirty_decay_ms:1000\0";

/// Makes jemalloc, with [`JEMALLOC_CONF`], the allocator of the binary that calls it (the
/// permd binary, and the benches whose figures are permd's). Does nothing without the default
/// `jemalloc` feature.
#[macro_export]
macro_rules! jemalloc {
    () => {
        #[cfg(feature = "jemalloc")]
        #[global_allocator]
        static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

        /// Read by jemalloc at its start. The one `unsafe` in permd: exporting a symbol under
        /// a chosen name. jemalloc reads it as a C string, which the constant is
        /// (NUL-terminated), and nothing else defines this name.
        #[cfg(feature = "jemalloc")]
        #[allow(unsafe_code, non_upper_case_globals)]
        #[unsafe(export_name = "_rjem_malloc_conf")]
        pub static malloc_conf: &[u8; 64] = $crate::JEMALLOC_CONF;
    };
}
