//! `trellis demo`. (Filled by the mesh work.)

#[derive(clap::Args, Debug)]
pub struct DemoArgs {}

pub fn run(_args: DemoArgs) -> anyhow::Result<()> {
    anyhow::bail!("the demo is not built yet")
}
