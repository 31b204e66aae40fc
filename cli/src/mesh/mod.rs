//! The local mesh. (Filled by the mesh work.)

#[derive(clap::Args, Debug)]
pub struct MeshArgs {}

pub fn run(_args: MeshArgs) -> anyhow::Result<()> {
    anyhow::bail!("the local mesh is not built yet")
}
