//! Shared plumbing for the `cnclip`, `cnclip-index` and `cnclip-search` binaries: model
//! resolution with a progress bar, error printing, broken-pipe handling.
//!
//! The binaries stay thin: they parse arguments, call into `cnclip-model` / `cnclip-index` /
//! `cnclip-search`, and print.
//!
//! - [`engine::ClipEngine`] is the real model behind cnclip-index's `ImageEmbedder` and
//!   cnclip-search's `QueryEncoder`.
//! - [`eval`] runs the official retrieval and zero-shot protocols (`cnclip eval`).
//! - [`device`] parses `--device cpu|cuda|cuda:N`; [`ComputeArgs`] is the `--precision` /
//!   `--device` pair all three binaries take.
//! - [`bench`](mod@bench) backs the hidden `cnclip bench` used by `tools/bench_vs_reference.py`.
//! - [`serve`] is `cnclip-search --serve ADDR`: the index and its model behind HTTP, in JSON,
//!   with a search page for browsers.

#![deny(missing_docs)]

pub mod bench;
pub mod device;
pub mod engine;
pub mod eval;
pub mod serve;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use cnclip_model::model::{ChineseClip, Towers};
use cnclip_model::zoo::{self, DownloadProgress, Resolver};

use crate::device::DeviceSpec;

/// `--precision` and `--device`: how and where the model runs (all three binaries take them).
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct ComputeArgs {
    /// Compute precision: f32 (default, the reference), f16, bf16, or q8 (8-bit weights, faster
    /// on CPUs; `--quantize q8`). An index records the precision that built it.
    #[arg(long, visible_alias = "quantize", value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,
    /// Where the model runs: cpu, cuda (GPU 0) or cuda:N (needs a build with `--features cuda`;
    /// use --precision f16 there). Reading and decoding images stay on the CPU.
    #[arg(long, env = "CNCLIP_DEVICE", default_value_t = DeviceSpec::Cpu)]
    pub device: DeviceSpec,
}

/// Compute precision on the command line (`--precision`, also spelled `--quantize q8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Precision {
    /// 32-bit floats (the reference's precision).
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    Bf16,
    /// 8-bit transformer weights (per-channel int8, activations quantized per block, integer
    /// products): faster on CPUs, embeddings within ~1e-3 in cosine of f32 (see
    /// `ChineseClip::quantize`).
    Q8,
}

impl Precision {
    /// The candle dtype the model is loaded in (`q8` loads in f32, then quantizes).
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 | Precision::Q8 => DType::F32,
            Precision::F16 => DType::F16,
            Precision::Bf16 => DType::BF16,
        }
    }

    /// The name written in index records and reports (`f32`, `f16`, `bf16`, `q8`).
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
            Precision::Q8 => "q8",
        }
    }
}

/// Resolves a `--model` argument (zoo name or path) to a local file, downloading it with a
/// progress bar if needed.
pub fn resolve_model(arg: &str) -> Result<PathBuf> {
    let spec = zoo::parse_model_arg(arg)?;
    let resolver = Resolver::from_env()?;
    Ok(resolver.resolve(&spec, &TerminalBar::bytes())?)
}

/// Resolves and loads a model (or one of its towers, [`Towers`]) on `device` (`--device`).
pub fn load_model_on(
    arg: &str,
    precision: Precision,
    towers: Towers,
    device: &Device,
) -> Result<ChineseClip> {
    if precision == Precision::Q8 && !device.is_cpu() {
        anyhow::bail!("--precision q8 runs on the CPU only; use f16, bf16 or f32 on a GPU");
    }
    let path = resolve_model(arg)?;
    let model = ChineseClip::load_towers(&path, device, precision.dtype(), towers)
        .with_context(|| format!("cannot load model {}", path.display()))?;
    if precision == Precision::Q8 {
        return Ok(model.quantize()?);
    }
    Ok(model)
}

/// `cnclip convert`: any supported checkpoint → `model.safetensors` + `config.json`.
pub fn convert(model: &str, out: &Path) -> Result<()> {
    let path = resolve_model(model)?;
    let ck = cnclip_model::weights::load(&path)?;
    cnclip_model::weights::check_complete(&ck)?;
    cnclip_model::weights::save_hf(&ck, out)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// `cnclip models`: the zoo, sizes, and where each model resolves from right now.
pub fn list_models(json: bool) -> Result<()> {
    use std::io::Write;
    let resolver = Resolver::from_env()?;
    let mut out = std::io::stdout().lock();
    for status in resolver.describe() {
        let name = status.preset.name();
        let r = if json {
            let line = serde_json::json!({
                "name": name,
                "file": status.file,
                "parameters": status.parameter_count,
                "size_bytes": status.size_bytes,
                "cache_path": status.cache_path,
                "location": status.location.to_string(),
            });
            writeln!(out, "{line}")
        } else {
            let size = match status.size_bytes {
                Some(b) => format!("{:.0} MB", b as f64 / 1e6),
                None => "size unknown".to_owned(),
            };
            writeln!(
                out,
                "{name:<13} {:>7.2}M params  {size:>12}  {}",
                status.parameter_count as f64 / 1e6,
                status.location
            )
        };
        stdout_ok(r)?;
    }
    Ok(())
}

/// Treats a closed stdout (`cnclip … | head`) as success, like ripgrep does.
pub fn stdout_ok(r: std::io::Result<()>) -> Result<()> {
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        other => Ok(other?),
    }
}

/// `path` as the index names files: canonical while it exists, else made absolute as given (a
/// photo or folder deleted since is still found by the path given).
pub fn as_indexed(path: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    Ok(std::fs::canonicalize(path).or_else(|_| std::path::absolute(path))?)
}

/// A cosine given as text (`--min-score`, `min_score=`): a number from -1 to 1.
pub fn parse_cosine(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(x) if (-1.0..=1.0).contains(&x) => Ok(x),
        _ => Err(format!("a cosine is a number from -1 to 1, not {s:?}")),
    }
}

/// Prints `error: …` with the whole cause chain and returns the failure exit code.
pub fn print_error(err: &anyhow::Error) -> ExitCode {
    eprintln!("error: {err:#}");
    ExitCode::from(1)
}

/// An indicatif bar on stderr when it is a terminal; silent otherwise. One type serves model
/// downloads (bytes) and `cnclip eval`'s steps (percent of items).
pub struct TerminalBar {
    bar: std::sync::Mutex<Option<indicatif::ProgressBar>>,
    template: &'static str,
}

impl TerminalBar {
    /// A bar counting bytes (downloads).
    pub fn bytes() -> TerminalBar {
        TerminalBar::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
    }

    /// A bar counting items, labelled with the step's name.
    pub fn steps() -> TerminalBar {
        TerminalBar::with_template("{msg:>14} {bar:40} {percent:>3}% eta {eta}")
    }

    fn with_template(template: &'static str) -> TerminalBar {
        TerminalBar {
            bar: std::sync::Mutex::new(None),
            template,
        }
    }

    fn begin(&self, message: &str, total: Option<u64>) {
        if !std::io::stderr().is_terminal() {
            return;
        }
        let bar = match total {
            Some(n) => indicatif::ProgressBar::new(n),
            None => indicatif::ProgressBar::new_spinner(),
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(self.template).expect("static template"),
        );
        bar.set_message(message.to_owned());
        *self.bar.lock().expect("progress lock") = Some(bar);
    }

    fn inc(&self, n: u64) {
        if let Some(b) = self.bar.lock().expect("progress lock").as_ref() {
            b.inc(n);
        }
    }

    fn end(&self) {
        if let Some(b) = self.bar.lock().expect("progress lock").take() {
            b.finish_and_clear();
        }
    }
}

impl DownloadProgress for TerminalBar {
    fn start(&self, url: &str, total: Option<u64>) {
        eprintln!("downloading {url}");
        self.begin(url, total);
    }

    fn advance(&self, bytes: u64) {
        self.inc(bytes);
    }

    fn finish(&self) {
        self.end();
    }
}

impl eval::Progress for TerminalBar {
    fn start(&self, step: &str, total: Option<u64>) {
        self.begin(step, total);
    }

    fn advance(&self, n: u64) {
        self.inc(n);
    }

    fn finish(&self) {
        self.end();
    }
}
