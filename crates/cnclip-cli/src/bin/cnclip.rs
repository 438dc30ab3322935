//! `cnclip`: model tools — embed, classify, tokenize, preprocess, convert, models.
//!
//! Thin over `cnclip-model`: parse, call the library, print. Output contracts (`--json`) are
//! documented on each subcommand; they are what scripts and tests rely on.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use cnclip_cli::eval::{self as ev, Backend, Progress};
use cnclip_cli::{load_model_on, print_error, stdout_ok, ComputeArgs};
use cnclip_model::model::ChineseClip;
use cnclip_model::model::Towers;
use cnclip_model::preprocess::{self, PreprocessOptions};
use cnclip_model::tokenizer::{Tokenizer, DEFAULT_CONTEXT_LENGTH};
use serde_json::json;

/// Chinese-CLIP model tools.
#[derive(Parser)]
#[command(name = "cnclip", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Embed texts and images. With --json, one line per input, texts first then images:
    /// {"kind": "text"|"image", "input": ..., "embedding": [L2-normalised floats]}.
    Embed {
        /// Zoo name (ViT-B-16, ViT-L-14, ViT-L-14-336, ViT-H-14, RN50) or a checkpoint path.
        #[arg(long, env = "CNCLIP_MODEL")]
        model: String,
        /// A text to embed (repeatable).
        #[arg(long = "text")]
        texts: Vec<String>,
        /// An image to embed (repeatable).
        #[arg(long = "image")]
        images: Vec<PathBuf>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        common: ModelArgs,
    },
    /// Zero-shot classification of one image over labels. With --json, one line per label in
    /// input order: {"label": ..., "prob": ...}.
    Classify {
        /// Zoo name or checkpoint path.
        #[arg(long, env = "CNCLIP_MODEL")]
        model: String,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// The image to classify.
        image: PathBuf,
        /// Candidate labels, e.g. 杰尼龟 妙蛙种子 小火龙 皮卡丘.
        #[arg(required = true)]
        labels: Vec<String>,
        #[command(flatten)]
        common: ModelArgs,
    },
    /// Token ids exactly as cn_clip.clip.tokenize gives them. With no TEXT, reads one JSON
    /// string per line from stdin. With --json: {"text": ..., "ids": [...]} per line.
    Tokenize {
        /// Context length (cn_clip's default: 52).
        #[arg(long, default_value_t = DEFAULT_CONTEXT_LENGTH)]
        context_length: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Texts to tokenize.
        texts: Vec<String>,
    },
    /// What the model sees: {"shape": [3, S, S], "data": [CHW floats after normalisation]}.
    Preprocess {
        /// Output side length (224, or 336 for ViT-L-14-336).
        #[arg(long, default_value_t = 224)]
        size: usize,
        /// Print JSON (the only output format).
        #[arg(long)]
        json: bool,
        /// Do not apply EXIF orientation (cn_clip's own behaviour).
        #[arg(long)]
        no_exif_orientation: bool,
        /// The image.
        image: PathBuf,
    },
    /// Convert a checkpoint (official .pt, HF directory, safetensors) to model.safetensors +
    /// config.json in transformers' ChineseCLIPModel layout (RN50: cn_clip names).
    Convert {
        /// Zoo name or checkpoint path.
        #[arg(long)]
        model: String,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// The model zoo: sizes and where each model resolves from right now.
    Models {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Evaluate on the official benchmarks: retrieval recall (MUGE, Flickr30K-CN, COCO-CN layout)
    /// and zero-shot classification (ImageFolder).
    Eval {
        #[command(subcommand)]
        command: EvalCommand,
    },
    /// Throughput measurement used by tools/bench_vs_reference.py (prints one JSON line).
    #[command(hide = true)]
    Bench {
        /// Zoo name or checkpoint path.
        #[arg(long)]
        model: Option<String>,
        /// What to measure: image, text or tokenize.
        #[arg(long)]
        what: cnclip_cli::bench::What,
        /// Batch size.
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Timed iterations (after one warm-up).
        #[arg(long, default_value_t = 5)]
        iters: usize,
        /// Texts, one per line (text and tokenize).
        #[arg(long)]
        corpus: Option<PathBuf>,
        #[command(flatten)]
        common: ModelArgs,
    },
}

#[derive(Subcommand)]
enum EvalCommand {
    /// Text→image and image→text R@1/5/10 and MR on ${split}_imgs.tsv + ${split}_texts.jsonl.
    /// With --json, one line: {"t2i": {"R@1", "R@5", "R@10", "MR"}, "i2t": {…}, "MR": mean of the
    /// six, …} in percent; with --index-backend hnsw, "exact" holds exact search's scores too.
    Retrieval {
        /// Zoo name or checkpoint path.
        #[arg(long, env = "CNCLIP_MODEL")]
        model: String,
        /// Directory holding ${split}_imgs.tsv and ${split}_texts.jsonl.
        #[arg(long)]
        data: PathBuf,
        /// Split name (valid, test, …).
        #[arg(long)]
        split: String,
        /// Exact search (the official protocol) or the HNSW graph, reported against exact.
        #[arg(long, value_enum, default_value_t = Backend::Exact)]
        index_backend: Backend,
        /// HNSW search candidate list size.
        #[arg(long, default_value_t = cnclip_index::graph::DEFAULT_EF_SEARCH)]
        ef_search: usize,
        /// Write text→image top-10 predictions here, as cn_clip's make_topk_predictions.py does.
        #[arg(long)]
        predictions: Option<PathBuf>,
        /// Write image→text top-10 predictions here, as make_topk_predictions_tr.py does.
        #[arg(long)]
        predictions_tr: Option<PathBuf>,
        /// Images (and texts) embedded at a time.
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        /// One JSON line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        common: ModelArgs,
    },
    /// Zero-shot top-1/top-5 accuracy on an ImageFolder (one subfolder per class, sorted order =
    /// class index). With --json: {"top1", "top5", "n", …}, accuracies in percent.
    Zeroshot {
        /// Zoo name or checkpoint path.
        #[arg(long, env = "CNCLIP_MODEL")]
        model: String,
        /// The ImageFolder root.
        #[arg(long)]
        data: PathBuf,
        /// label_cn.txt: one Chinese label per line, in class-index order.
        #[arg(long)]
        labels: PathBuf,
        /// Prompt templates, one per line with {} for the label (default: cnclip's own).
        #[arg(long)]
        templates: Option<PathBuf>,
        /// Images embedded at a time.
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        /// One JSON line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        common: ModelArgs,
    },
}

/// Options shared by commands that run the model.
#[derive(clap::Args)]
struct ModelArgs {
    #[command(flatten)]
    compute: ComputeArgs,
    /// Do not apply EXIF orientation to images (cn_clip's own behaviour).
    #[arg(long)]
    no_exif_orientation: bool,
}

impl ModelArgs {
    /// Resolves and loads `model` (its `towers`) with these options.
    fn load(&self, model: &str, towers: Towers) -> Result<ChineseClip> {
        let ComputeArgs { precision, device } = self.compute;
        load_model_on(model, precision, towers, &device.open()?)
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => print_error(&err),
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Embed {
            model,
            texts,
            images,
            json,
            common,
        } => embed(&model, &texts, &images, json, &common),
        Command::Classify {
            model,
            json,
            image,
            labels,
            common,
        } => classify(&model, &image, &labels, json, &common),
        Command::Tokenize {
            context_length,
            json,
            texts,
        } => tokenize(context_length, json, texts),
        Command::Preprocess {
            size,
            json: _,
            no_exif_orientation,
            image,
        } => {
            let opts = PreprocessOptions {
                size,
                exif_orientation: !no_exif_orientation,
                ..PreprocessOptions::default()
            };
            let data = preprocess::preprocess_path(&image, &opts)?;
            let line = json!({"shape": [3, size, size], "data": data});
            stdout_ok(writeln!(std::io::stdout().lock(), "{line}"))
        }
        Command::Convert { model, out } => cnclip_cli::convert(&model, &out),
        Command::Models { json } => cnclip_cli::list_models(json),
        Command::Eval { command } => eval(command),
        Command::Bench {
            model,
            what,
            batch,
            iters,
            corpus,
            common,
        } => {
            let report = cnclip_cli::bench::run(
                model.as_deref(),
                what,
                batch,
                iters,
                corpus.as_deref(),
                common.compute.precision,
                &common.compute.device.open()?,
            )?;
            stdout_ok(writeln!(std::io::stdout().lock(), "{report}"))
        }
    }
}

fn preprocess_options(size: usize, common: &ModelArgs) -> PreprocessOptions {
    PreprocessOptions {
        size,
        exif_orientation: !common.no_exif_orientation,
        ..PreprocessOptions::default()
    }
}

fn eval(command: EvalCommand) -> Result<()> {
    let bar = cnclip_cli::TerminalBar::steps();
    let progress: &dyn Progress = &bar;
    let (json, report) = match command {
        EvalCommand::Retrieval {
            model,
            data,
            split,
            index_backend,
            ef_search,
            predictions,
            predictions_tr,
            batch_size,
            json,
            common,
        } => {
            if batch_size == 0 {
                bail!("--batch-size must be at least 1");
            }
            let opts = ev::RetrievalOptions {
                data,
                split,
                batch_size,
                backend: index_backend,
                graph: cnclip_index::graph::GraphParams {
                    ef_search,
                    ..Default::default()
                },
                preprocess: preprocess_options(0, &common),
                predictions,
                predictions_tr,
            };
            opts.check()?;
            let model = common.load(&model, Towers::Both)?;
            let r = ev::retrieval::evaluate(&model, &opts, progress)?;
            (json, (r.to_json(), r.to_text()))
        }
        EvalCommand::Zeroshot {
            model,
            data,
            labels,
            templates,
            batch_size,
            json,
            common,
        } => {
            if batch_size == 0 {
                bail!("--batch-size must be at least 1");
            }
            let opts = ev::ZeroShotOptions {
                data,
                labels,
                templates,
                batch_size,
                preprocess: preprocess_options(0, &common),
            };
            opts.check()?;
            let model = common.load(&model, Towers::Both)?;
            let r = ev::zeroshot::evaluate(&model, &opts, progress)?;
            (json, (r.to_json(), r.to_text()))
        }
    };
    let mut out = std::io::stdout().lock();
    if json {
        stdout_ok(writeln!(out, "{}", report.0))
    } else {
        stdout_ok(write!(out, "{}", report.1))
    }
}

fn embed(
    model: &str,
    texts: &[String],
    images: &[PathBuf],
    json: bool,
    common: &ModelArgs,
) -> Result<()> {
    if texts.is_empty() && images.is_empty() {
        bail!("nothing to embed: pass --text TEXT and/or --image PATH");
    }
    // Only the tower(s) the inputs need are read (half the loading for texts alone).
    let towers = match (texts.is_empty(), images.is_empty()) {
        (false, true) => Towers::Text,
        (true, false) => Towers::Image,
        _ => Towers::Both,
    };
    let model = common.load(model, towers)?;
    let text_refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let text_features = model.encode_texts_normalized(&text_refs)?;
    let opts = preprocess_options(model.image_size(), common);
    let pixels = images
        .iter()
        .map(|p| preprocess::preprocess_path(p, &opts))
        .collect::<Result<Vec<_>, _>>()?;
    let image_features = model.encode_image_data_normalized(&pixels)?;
    let mut out = std::io::stdout().lock();
    for (text, e) in texts.iter().zip(&text_features) {
        stdout_ok(print_embedding(&mut out, json, "text", text, e))?;
    }
    for (path, e) in images.iter().zip(&image_features) {
        stdout_ok(print_embedding(
            &mut out,
            json,
            "image",
            &path.display().to_string(),
            e,
        ))?;
    }
    Ok(())
}

fn print_embedding(
    out: &mut impl Write,
    json: bool,
    kind: &str,
    input: &str,
    embedding: &[f32],
) -> std::io::Result<()> {
    if json {
        let line = json!({"kind": kind, "input": input, "embedding": embedding});
        writeln!(out, "{line}")
    } else {
        let head: Vec<String> = embedding
            .iter()
            .take(4)
            .map(|x| format!("{x:.4}"))
            .collect();
        writeln!(
            out,
            "{kind}\t{input}\t[{}, …] ({} dims)",
            head.join(", "),
            embedding.len()
        )
    }
}

fn classify(
    model: &str,
    image: &std::path::Path,
    labels: &[String],
    json: bool,
    common: &ModelArgs,
) -> Result<()> {
    let model = common.load(model, Towers::Both)?;
    let opts = preprocess_options(model.image_size(), common);
    let pixels = preprocess::preprocess_path(image, &opts)?;
    let label_refs: Vec<&str> = labels.iter().map(String::as_str).collect();
    let probs = model.classify(&[pixels], &label_refs)?.remove(0);
    let mut out = std::io::stdout().lock();
    for (label, p) in labels.iter().zip(&probs) {
        let r = if json {
            writeln!(out, "{}", json!({"label": label, "prob": p}))
        } else {
            writeln!(out, "{p:.4}\t{label}")
        };
        stdout_ok(r)?;
    }
    Ok(())
}

fn tokenize(context_length: usize, json: bool, texts: Vec<String>) -> Result<()> {
    let texts = if texts.is_empty() {
        let mut v = Vec::new();
        for (i, line) in std::io::stdin().lock().lines().enumerate() {
            let line = line.context("cannot read stdin")?;
            if line.trim().is_empty() {
                continue;
            }
            let text: String = serde_json::from_str(&line)
                .with_context(|| format!("stdin line {}: expected a JSON string", i + 1))?;
            v.push(text);
        }
        v
    } else {
        texts
    };
    let tok = Tokenizer::chinese();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for text in &texts {
        let ids = tok.encode(text, context_length)?;
        let r = if json {
            writeln!(out, "{}", json!({"text": text, "ids": ids}))
        } else {
            let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
            writeln!(out, "{}", ids.join(" "))
        };
        stdout_ok(r)?;
    }
    stdout_ok(out.flush())
}
