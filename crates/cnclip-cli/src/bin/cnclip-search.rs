//! `cnclip-search`: find images in an index by a Chinese text or by an example image.
//!
//! `cnclip-search "一只小猫"` encodes the query with the model that built the index (recorded in
//! the index; `--model` overrides) and prints the top-k images by cosine similarity. It reads the
//! index without taking its lock, so it answers while `cnclip-index build` runs, from everything
//! committed so far.
//!
//! `cnclip-search --serve 127.0.0.1:7860` keeps the model and the index loaded and answers text
//! and image queries over HTTP instead, and gives backends the embeddings themselves (see
//! `cnclip_cli::serve`).

use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use cnclip_cli::engine::{jpeg_decode_of, read_model_record, ClipEngine, EngineOptions};
use cnclip_cli::{as_indexed, print_error, stdout_ok, ComputeArgs};
use cnclip_model::model::Towers;
use cnclip_search::{Error, Hit, QueryEncoder, Scope, Searcher};

/// Search a Chinese-CLIP image index.
#[derive(Parser)]
#[command(name = "cnclip-search", version, about)]
struct Cli {
    /// The query text, e.g. 一只小猫.
    #[arg(
        required_unless_present_any = ["image", "similar", "serve"],
        conflicts_with_all = ["image", "similar", "serve"]
    )]
    query: Option<String>,
    /// Search by an example image instead of text.
    #[arg(long, conflicts_with_all = ["similar", "serve"])]
    image: Option<PathBuf>,
    /// Images like one already in the index, from the vector stored for it: no model loads, so
    /// it takes what opening the index takes. The photo itself comes first.
    #[arg(long, value_name = "PHOTO", conflicts_with = "serve")]
    similar: Option<PathBuf>,
    /// Answer queries over HTTP on this address (alone: 127.0.0.1:7860; port 0 picks a free
    /// one) until stopped: GET /search?q=TEXT&k=N, POST /search?k=N with an image as the body,
    /// GET /similar?path=PHOTO&k=N, GET /embed?text=TEXT and POST /embed with an image (the
    /// embedding itself), GET /status; JSON answers. No authentication: keep it on a loopback
    /// address.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:7860")]
    serve: Option<String>,
    /// The index directory (default: $CNCLIP_INDEX, else $XDG_DATA_HOME/cnclip/index, else
    /// ~/.local/share/cnclip/index).
    #[arg(long)]
    index: Option<PathBuf>,
    /// Query arithmetic: also like this text (may be given several times), e.g.
    /// `--image beach.jpg --add 夜晚` for that beach at night. Each text counts as much as the
    /// query itself.
    #[arg(long, value_name = "TEXT", conflicts_with = "serve")]
    add: Vec<String>,
    /// Query arithmetic: unlike this text (may be given several times), e.g.
    /// `猫 --subtract 室内` for cats outdoors.
    #[arg(long, value_name = "TEXT", conflicts_with = "serve")]
    subtract: Vec<String>,
    /// Only images under this folder (or this file); may be given several times. Such searches
    /// are exact.
    #[arg(long, value_name = "DIR", conflicts_with = "serve")]
    under: Vec<PathBuf>,
    /// How many results (a server takes `k` per request).
    #[arg(
        short,
        default_value_t = 10,
        value_parser = clap::value_parser!(u32).range(1..),
        conflicts_with = "serve"
    )]
    k: u32,
    /// Only hits scoring at least this (cosine, -1 to 1): with --similar 0.95 or so finds near
    /// duplicates of a photo (the same scene again, a resized or re-encoded copy).
    #[arg(
        long,
        value_name = "SCORE",
        conflicts_with = "serve",
        allow_negative_numbers = true,
        value_parser = cnclip_cli::parse_cosine
    )]
    min_score: Option<f32>,
    /// One line per hit: {"rank", "score" (cosine), "path" (absolute)}.
    #[arg(long, conflicts_with = "serve")]
    json: bool,
    /// Model to encode the query with (default: the one that built the index).
    #[arg(long, env = "CNCLIP_MODEL")]
    model: Option<String>,
    /// How and where the query encoder runs (for one query the CPU is usually faster than
    /// starting a GPU).
    #[command(flatten)]
    compute: ComputeArgs,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => print_error(&err),
    }
}

fn run(cli: Cli) -> Result<()> {
    // A taken or malformed address is said before anything loads.
    let listener = cli
        .serve
        .as_ref()
        .map(|addr| TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}")))
        .transpose()?;
    let index_dir = match &cli.index {
        Some(p) => p.clone(),
        None => cnclip_index::default_index_path()
            .context("no --index given and neither CNCLIP_INDEX, XDG_DATA_HOME nor HOME is set")?,
    };
    let k = cli.k as usize;
    let scope = if cli.under.is_empty() {
        Scope::all()
    } else {
        Scope::under(
            cli.under
                .iter()
                .map(|p| as_indexed(p))
                .collect::<Result<Vec<_>>>()?,
        )
    };
    let arithmetic = !cli.add.is_empty() || !cli.subtract.is_empty();
    if let Some(photo) = cli.similar.as_ref().filter(|_| !arithmetic) {
        let searcher = Searcher::open_exact(&index_dir)?;
        for w in searcher.warnings() {
            eprintln!("warning: {w}");
        }
        let hits = searcher.search_similar_in(&as_indexed(photo)?, k, &scope)?;
        return print_hits(hits, cli.json, cli.min_score);
    }
    // The header alone names the model and its preprocessing, so the model loads while the
    // vectors are read (each is about half of a one-query run's start-up).
    let identity = cnclip_index::view::ViewReader::open(&index_dir)?
        .header()
        .identity
        .clone();
    let model = match cli.model {
        Some(m) => m,
        None => match read_model_record(&index_dir)? {
            Some(r) if r.path.exists() => r.path.display().to_string(),
            Some(r) => r.model,
            None => bail!(
                "{}: the index does not say which model built it ({}); pass --model",
                index_dir.display(),
                identity.model
            ),
        },
    };
    let exif = !identity.preprocess.ends_with("exif-off");
    // A query image is decoded as the index's photos were: at reduced scale when it is a large
    // JPEG and the index was built that way (the default).
    let jpeg_decode = jpeg_decode_of(&identity);
    let (searcher, engine) = std::thread::scope(|s| {
        // One query per run: an exact scan answers sooner than loading the graph would (see
        // `Searcher::open_exact`). A server answers many: the graph pays.
        let searcher = s.spawn(|| {
            if listener.is_some() {
                Searcher::open(&index_dir)
            } else {
                Searcher::open_exact(&index_dir)
            }
        });
        let opts = EngineOptions {
            precision: cli.compute.precision,
            exif_orientation: exif,
            jpeg_decode,
            // One query, one tower: a text query never reads the image tower's weights.
            towers: match (&listener, &cli.image) {
                (Some(_), _) => Towers::Both,
                (None, Some(_)) if arithmetic => Towers::Both,
                (None, Some(_)) => Towers::Image,
                (None, None) => Towers::Text,
            },
            device: cli.compute.device,
        };
        let engine = ClipEngine::load(&model, opts);
        let searcher = searcher.join().expect("index reader thread panicked");
        (searcher, engine)
    });
    let (searcher, engine) = (searcher?, engine?);
    let ours = QueryEncoder::identity(&engine);
    if !ours.compatible(&identity) {
        bail!(
            "{}: the index was built with {identity}, but --model {model} is {ours}; search it \
             with the model that built it",
            index_dir.display()
        );
    }
    for w in searcher.warnings() {
        eprintln!("warning: {w}");
    }
    if let Some(listener) = listener {
        let bound = listener.local_addr()?;
        // The first line on stdout: scripts (and the tests) read the port from it.
        stdout_ok(writeln!(
            std::io::stdout().lock(),
            "serving {} ({} images) on http://{bound}",
            index_dir.display(),
            searcher.len()
        ))?;
        cnclip_cli::serve::serve(listener, searcher, engine);
    }
    if arithmetic {
        let query = match (&cli.query, &cli.image, &cli.similar) {
            (_, Some(path), _) => engine.encode_image(path).map_err(Error::Embed)?,
            (_, _, Some(photo)) => {
                let path = as_indexed(photo)?;
                (searcher.vector_of(&path)).ok_or(Error::NotIndexed { path })?
            }
            (Some(text), None, None) => encode_text(&engine, text)?,
            (None, None, None) => bail!("give a QUERY, --image PATH or --similar PHOTO"),
        };
        let encode_all = |texts: &[String]| -> Result<Vec<Vec<f32>>> {
            texts.iter().map(|t| encode_text(&engine, t)).collect()
        };
        let query =
            cnclip_search::combine(&query, &encode_all(&cli.add)?, &encode_all(&cli.subtract)?)?;
        return print_hits(
            searcher.search_vector_in(&query, k, &scope)?,
            cli.json,
            cli.min_score,
        );
    }
    let hits = match (&cli.query, &cli.image) {
        (_, Some(path)) => searcher.search_image_in(&engine, path, k, &scope)?,
        (Some(text), None) => searcher.search_text_in(&engine, text, k, &scope)?,
        (None, None) => bail!("give a QUERY or --image PATH"),
    };
    print_hits(hits, cli.json, cli.min_score)
}

/// A text's vector; an empty text is refused, as `Searcher::search_text` refuses it.
fn encode_text(engine: &ClipEngine, text: &str) -> Result<Vec<f32>> {
    if text.trim().is_empty() {
        return Err(Error::EmptyQuery.into());
    }
    Ok(engine.encode_text(text).map_err(Error::Embed)?)
}

/// Prints the hits that score at least `--min-score`.
fn print_hits(mut hits: Vec<Hit>, json: bool, min_score: Option<f32>) -> Result<()> {
    if let Some(min) = min_score {
        hits.retain(|h| h.score >= min);
    }
    let mut out = std::io::stdout().lock();
    for hit in &hits {
        let r = if json {
            writeln!(out, "{}", serde_json::to_string(hit)?)
        } else {
            writeln!(
                out,
                "{:>3}  {:.4}  {}",
                hit.rank,
                hit.score,
                hit.path.display()
            )
        };
        stdout_ok(r)?;
    }
    Ok(())
}
