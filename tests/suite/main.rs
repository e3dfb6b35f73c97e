//! The integration tests, as one test binary (one link instead of one per file: the release test
//! build is several minutes shorter). Each module is one area; `cargo test --release MODULE::`
//! runs one of them, e.g. `cargo test --release cli::`.

mod common;

mod architecture;
mod cli;
mod conv;
mod data;
mod fuzz;
mod grad;
mod hardening;
mod hippo_memory;
mod kernels;
mod layer;
mod model;
mod official_models;
mod shakespeare;
mod speculative;
mod train;
mod transformer;
mod transformer_classifier;
