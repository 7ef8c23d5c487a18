//! Writes the seed corpus: `cargo +nightly run --manifest-path
//! fuzz/Cargo.toml --example seeds -- tests/fuzz/corpus` (each target's
//! seeds in `<dir>/<target>/seed-<name>`).

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or("tests/fuzz/corpus".into()),
    );
    for (target, seeds) in fuzz::seeds::all() {
        let d = dir.join(target);
        std::fs::create_dir_all(&d)?;
        for (name, bytes) in seeds {
            std::fs::write(d.join(format!("seed-{name}")), bytes)?;
        }
    }
    Ok(())
}
