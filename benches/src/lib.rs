//! Benchmarks (see README.md): the route table micro benchmarks in `benches/table.rs`
//! (criterion), the load comparison with nginx and HAProxy in `load.sh`, and the propagation
//! and start-up benchmark in `src/bin/propagation.rs`.

use anyhow::Context;

/// A uuid-shaped route id for route `i`: `http-` and 36 characters, as the controller makes.
pub fn route_id(i: usize) -> String {
    let x = (i as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
    let h = format!("{x:032x}");
    format!(
        "http-{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The number in the environment variable `name`, `default` when it is not set.
pub fn env_usize(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v:?} is not a number")),
        Err(_) => Ok(default),
    }
}
