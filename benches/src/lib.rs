//! Benchmarks (see README.md): the route table micro benchmarks in `benches/table.rs`
//! (criterion), the load comparison with nginx and HAProxy in `load.sh`, and the propagation
//! and start-up benchmark in `src/bin/propagation.rs`.
