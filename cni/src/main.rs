//! `trellis-cni` — a CNI plugin when the container runtime runs it
//! (`CNI_COMMAND` set), else the node installer: `trellis-cni install`,
//! `trellis-cni uninstall`.

use std::process::ExitCode;

fn main() -> ExitCode {
    if std::env::var_os("CNI_COMMAND").is_some() {
        return trellis_cni::plugin::main();
    }
    trellis_core::errln!("trellis-cni: a CNI plugin (run by the container runtime, CNI_COMMAND set); the installer's commands come next");
    ExitCode::FAILURE
}
