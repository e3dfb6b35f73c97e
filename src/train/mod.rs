//! Training in Rust: backward passes ([`grad`]), the optimizer ([`optim`]) and the trainer loop
//! ([`trainer`]).

pub mod grad;
