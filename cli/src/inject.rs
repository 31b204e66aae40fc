//! `trellis inject -f FILE|-`: prints a manifest with every pod template
//! injected, by the webhook's own logic (`trellis_injector::manifest`).
//! What was injected or skipped, and why, goes to stderr, so stdout can be
//! piped to `kubectl apply -f -`.

use std::io::Read as _;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use clap::Args;
use trellis_core::errln;
use trellis_injector::manifest::inject_manifest;
use trellis_injector::InjectorConfig;

#[derive(Args, Debug)]
pub struct InjectArgs {
    /// The manifest: a file, or `-` for stdin. Multi-document YAML.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    file: PathBuf,
    /// The injector's configuration (the chart's `trellis-injector-config`
    /// ConfigMap's `config.yaml`); built-in defaults when absent.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Namespace of objects that name none.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// Fail (exit 1) when any pod template was left alone.
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
    match trellis_core::stdio::write_out(format_args!("{}", out.yaml)) {
        Ok(()) => {}
        // The reader is gone (`| head`): nothing more to print to.
        Err(e) if trellis_core::stdio::is_broken_pipe(&e) => return Ok(()),
        Err(e) => return Err(anyhow::Error::new(e).context("writing the manifest to stdout")),
    }
    let mut skipped = 0;
    for r in &out.results {
        errln!("{r}");
        skipped += usize::from(r.skipped.is_some());
    }
    if out.results.is_empty() {
        errln!(
            "no pod templates in {}: printed unchanged",
            args.file.display()
        );
    }
    if args.strict && skipped > 0 {
        bail!("{skipped} pod template(s) were not injected");
    }
    Ok(())
}
