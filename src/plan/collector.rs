//! See the module list in `plan/mod.rs`.
