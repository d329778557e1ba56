//! `cargo xtask seed` (being written).

pub fn run(_args: &[String]) -> anyhow::Result<()> {
    anyhow::bail!("cargo xtask seed is not written yet")
}
