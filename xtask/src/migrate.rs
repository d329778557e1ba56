//! `cargo xtask migrate` (being written).

pub fn run(_args: &[String]) -> anyhow::Result<()> {
    anyhow::bail!("cargo xtask migrate is not written yet")
}
