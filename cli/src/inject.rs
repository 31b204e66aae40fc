//! `trellis inject -f FILE|-`: prints a manifest with every pod template
//! injected, by the webhook's own logic (`trellis_injector::manifest`).
//! What was injected, skipped or passed through, and why, goes to stderr,
//! one line per object, so stdout can be piped to `kubectl apply -f -`.
//! A pod template below the floor (the configuration's `floor:`, or its
//! Namespace's `config.trellis.dev/floor-*` annotations) is refused, as the
//! webhook would refuse it: reported, printed unchanged, and the exit
//! status is 1; under `enforcement: warn` it is injected with the floor
//! applied and the warning reported.

use std::io::Read as _;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::Args;
use trellis_core::errln;
use trellis_injector::manifest::inject_manifest;
use trellis_injector::InjectorConfig;

#[derive(Args, Debug)]
pub struct InjectArgs {
    /// The manifest: a file, or `-` for stdin. Multi-document YAML, or JSON.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    file: PathBuf,
    /// The injector's configuration (the chart's `trellis-injector-config`
    /// ConfigMap's `config.yaml`); built-in defaults when absent.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Namespace of objects that name none.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// Exit 1 when any pod template is left without a proxy: skipped by the
    /// injector (opted out, host network, ...), or in an object that holds
    /// pods but is not a kind trellis inject knows. A template that already
    /// has the proxy counts as done, so re-running on injected output
    /// passes.
    #[arg(long)]
    strict: bool,
}

pub fn run(args: InjectArgs) -> anyhow::Result<()> {
    let cfg = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            InjectorConfig::from_yaml(&text).map_err(anyhow::Error::msg)?
        }
        None => InjectorConfig::default(),
    };
    let text = if args.file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the manifest from stdin")?;
        s
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("reading {}", args.file.display()))?
    };
    let out = inject_manifest(&text, &cfg, &args.namespace)
        .with_context(|| format!("injecting {}", args.file.display()))?;
    match trellis_core::stdio::write_out(format_args!("{}", out.text)) {
        Ok(()) => {}
        // The reader is gone (`| head`): nothing more to print to.
        Err(e) if trellis_core::stdio::is_broken_pipe(&e) => return Ok(()),
        Err(e) => return Err(anyhow::Error::new(e).context("writing the manifest to stdout")),
    }
    for r in &out.reports {
        errln!("{r}");
    }
    let refused = out.refused();
    if refused > 0 {
        bail!(
            "{refused} pod template(s) refused by the Trellis floor (printed unchanged; see above)"
        );
    }
    let failed = out.failed();
    if failed > 0 {
        bail!("{failed} document(s) could not be processed (printed unchanged; see above)");
    }
    let left = out.left_alone();
    if args.strict && left > 0 {
        bail!("--strict: {left} pod template(s) were not injected (see above)");
    }
    Ok(())
}
