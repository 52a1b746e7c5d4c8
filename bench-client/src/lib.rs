//! `bench-client`: compares models across seeds through the evaluator's gRPC service and turns
//! per-class counts into statistics (mean, sample SD, Student-t intervals, Welch's test), tables
//! in the paper's Table 1 layout, CSV files and PNG plots. No libtorch: it depends on the proto
//! contract only.

pub mod attacks;
pub mod client;
pub mod confusion;
pub mod curves;
pub mod html;
pub mod insight_html;
pub mod insight_plots;
pub mod insight_tables;
pub mod logs;
pub mod plots;
pub mod precision;
pub mod provenance;
pub mod report;
pub mod results;
pub mod selection;
pub mod split;
pub mod stats;
pub mod summary;
pub mod uncertainty;
