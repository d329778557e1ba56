//! `cargo xtask bench`: load benchmark of a release hub-server over loopback (written next).

pub fn run(_args: &[String]) -> anyhow::Result<()> {
    anyhow::bail!("not written yet")
}
