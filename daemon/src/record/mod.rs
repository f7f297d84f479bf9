//! Recording: naming now; segmenting, TS/HLS writing and the single- and
//! mixed-stream pipelines next.

pub mod naming;
pub mod playlist;
pub mod segmenter;
