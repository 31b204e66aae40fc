//! Programs that run inside pods of the local mesh. (Filled by the app work.)

#[derive(clap::Subcommand, Debug)]
pub enum AppCommand {}

pub fn run(cmd: AppCommand) -> anyhow::Result<()> {
    match cmd {}
}
