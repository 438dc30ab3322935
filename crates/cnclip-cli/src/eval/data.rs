//! Readers for the official evaluation layouts: `${split}_imgs.tsv`, `${split}_texts.jsonl`, an
//! ImageFolder tree, `label_cn.txt` and template files.
//!
//! Every error names the file and, for line-oriented files, the 1-based line number.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use base64::Engine as _;

/// One line of `${split}_texts.jsonl`: a query text and the images it describes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct TextRecord {
    /// The text's id (an integer, as the official scorer requires).
    pub text_id: i64,
    /// The caption.
    pub text: String,
    /// Ground-truth image ids.
    pub image_ids: Vec<i64>,
}

/// Reads `${split}_texts.jsonl`. Blank lines are skipped; a malformed line or a repeated
/// `text_id` is an error naming the line.
pub fn read_texts(path: &Path) -> Result<Vec<TextRecord>> {
    let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("{}:{}: cannot read", path.display(), i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let rec: TextRecord = serde_json::from_str(&line).with_context(|| {
            format!(
                "{}:{}: expected {{\"text_id\": int, \"text\": str, \"image_ids\": [int]}}",
                path.display(),
                i + 1
            )
        })?;
        if !seen.insert(rec.text_id) {
            bail!(
                "{}:{}: text_id {} appears twice",
                path.display(),
                i + 1,
                rec.text_id
            );
        }
        out.push(rec);
    }
    Ok(out)
}

/// One line of `${split}_imgs.tsv`, its image still encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageLine {
    /// 1-based line number, for error messages.
    pub line: usize,
    /// The image's id.
    pub image_id: i64,
    /// The encoded image file (JPEG, PNG, …), base64-decoded.
    pub bytes: Vec<u8>,
    /// Bytes of the file this line took, newline included (for progress by bytes).
    pub raw_len: u64,
}

/// Streams `${split}_imgs.tsv` (`image_id<TAB>base64`) one line at a time, so that a split of
/// any size is never held in memory.
pub struct ImageLines {
    path: PathBuf,
    reader: BufReader<File>,
    line: usize,
    buf: String,
}

impl ImageLines {
    /// Opens the file.
    pub fn open(path: &Path) -> Result<ImageLines> {
        let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
        Ok(ImageLines {
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(1 << 20, file),
            line: 0,
            buf: String::new(),
        })
    }

    fn parse(&self, text: &str, raw_len: u64) -> Result<ImageLine> {
        let at = || format!("{}:{}", self.path.display(), self.line);
        let Some((id, b64)) = text.split_once('\t') else {
            bail!("{}: expected image_id<TAB>base64 image", at());
        };
        let image_id: i64 = id
            .trim()
            .parse()
            .with_context(|| format!("{}: image_id {id:?} is not an integer", at()))?;
        let bytes = decode_base64(b64.trim())
            .with_context(|| format!("{}: image_id {image_id}: bad base64", at()))?;
        Ok(ImageLine {
            line: self.line,
            image_id,
            bytes,
            raw_len,
        })
    }
}

impl Iterator for ImageLines {
    type Item = Result<ImageLine>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.buf.clear();
            self.line += 1;
            let n = match self.reader.read_line(&mut self.buf) {
                Ok(0) => return None,
                Ok(n) => n as u64,
                Err(e) => {
                    let e = anyhow::Error::new(e).context(format!(
                        "{}:{}: cannot read",
                        self.path.display(),
                        self.line
                    ));
                    return Some(Err(e));
                }
            };
            let text = self.buf.trim_end_matches(['\n', '\r']);
            if text.trim().is_empty() {
                continue;
            }
            return Some(self.parse(text, n));
        }
    }
}

/// Decodes base64 in either alphabet (cn_clip writes `urlsafe_b64encode`; other tools write the
/// standard one), with or without `=` padding. The two alphabets differ only in `+/` vs `-_`, so
/// mapping the URL-safe characters onto the standard ones accepts both, as Python's
/// `urlsafe_b64decode` does.
pub fn decode_base64(s: &str) -> Result<Vec<u8>> {
    let standard: Vec<u8> = s
        .bytes()
        .map(|b| match b {
            b'-' => b'+',
            b'_' => b'/',
            b => b,
        })
        .collect();
    Ok(base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT.decode(standard)?)
}

/// File extensions torchvision's `ImageFolder` accepts (`IMG_EXTENSIONS`), compared
/// case-insensitively as it does.
pub const IMG_EXTENSIONS: &[&str] = &[
    "jpg", "jpeg", "png", "ppm", "bmp", "pgm", "tif", "tiff", "webp",
];

/// An ImageFolder dataset: class folder names (sorted, their index is the class index) and
/// `(path, class index)` samples.
#[derive(Clone, Debug, Default)]
pub struct ImageFolder {
    /// Class folder names in class-index order.
    pub classes: Vec<String>,
    /// Every image with its class index.
    pub samples: Vec<(PathBuf, usize)>,
}

/// Scans `root` like `torchvision.datasets.ImageFolder`: each subdirectory is a class, sorted by
/// name; its image files (searched recursively, links followed) are the samples. A class with no
/// image is an error, as in torchvision.
pub fn scan_image_folder(root: &Path) -> Result<ImageFolder> {
    let mut classes = Vec::new();
    for entry in
        std::fs::read_dir(root).with_context(|| format!("{}: cannot list", root.display()))?
    {
        let entry = entry.with_context(|| format!("{}: cannot list", root.display()))?;
        if entry.path().is_dir() {
            let name = entry.file_name().into_string().map_err(|n| {
                anyhow::anyhow!("{}: class folder name {n:?} is not UTF-8", root.display())
            })?;
            classes.push(name);
        }
    }
    if classes.is_empty() {
        bail!("{}: no class folders", root.display());
    }
    // Python sorts str by code point; Rust's String order (UTF-8 bytes) is the same order.
    classes.sort();
    let mut samples = Vec::new();
    for (idx, class) in classes.iter().enumerate() {
        let dir = root.join(class);
        let mut files = Vec::new();
        collect_images(&dir, &mut files)?;
        if files.is_empty() {
            bail!("{}: class folder has no image files", dir.display());
        }
        files.sort();
        samples.extend(files.into_iter().map(|p| (p, idx)));
    }
    Ok(ImageFolder { classes, samples })
}

fn collect_images(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in
        std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))?
    {
        let path = entry
            .with_context(|| format!("{}: cannot list", dir.display()))?
            .path();
        if path.is_dir() {
            collect_images(&path, out)?;
        } else if is_image_file(&path) {
            out.push(path);
        }
    }
    Ok(())
}

fn is_image_file(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMG_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

/// Reads `label_cn.txt`: one label per line in class-index order, each trimmed (cn_clip's
/// `line.strip()`). A blank line is an error naming it.
pub fn read_labels(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let mut labels = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let label = line.trim();
        if label.is_empty() {
            bail!("{}:{}: empty label", path.display(), i + 1);
        }
        labels.push(label.to_owned());
    }
    Ok(labels)
}

/// Reads a template file: one template per line with exactly one `{}` where the label goes.
/// Blank lines and lines starting with `#` are skipped.
pub fn read_templates(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if t.matches("{}").count() != 1 {
            bail!(
                "{}:{}: a template needs exactly one {{}} for the label",
                path.display(),
                i + 1
            );
        }
        out.push(t.to_owned());
    }
    if out.is_empty() {
        bail!("{}: no templates", path.display());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_accepts_both_alphabets_with_and_without_padding() {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        // Bytes chosen so the encodings contain `+`/`/` (standard) and `-`/`_` (URL-safe) and
        // need padding.
        let data: Vec<u8> = vec![0xfb, 0xff, 0xbf, 0xfe, 0x01];
        let std_pad = STANDARD.encode(&data);
        let url = URL_SAFE_NO_PAD.encode(&data);
        assert!(std_pad.contains('+') || std_pad.contains('/'));
        assert!(std_pad.ends_with('='));
        assert!(url.contains('-') || url.contains('_'));
        assert_eq!(decode_base64(&std_pad).unwrap(), data);
        assert_eq!(decode_base64(&url).unwrap(), data);
        assert_eq!(decode_base64(std_pad.trim_end_matches('=')).unwrap(), data);
        assert!(decode_base64("not base64!").is_err());
    }

    #[test]
    fn image_files_match_torchvision_extensions() {
        assert!(is_image_file(Path::new("a/b.JPG")));
        assert!(is_image_file(Path::new("a/b.webp")));
        assert!(!is_image_file(Path::new("a/b.gif")));
        assert!(!is_image_file(Path::new("a/README")));
    }
}
