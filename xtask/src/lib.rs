//! Repository automation behind `cargo xtask`. Kept as a library so the layer check can be
//! tested against fixture workspaces.

pub mod ci;
pub mod fuzz;
pub mod layers;
pub mod readme;
