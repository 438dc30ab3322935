//! Checkpoint loading against tiny random-weight checkpoints written by cn_clip / torch /
//! transformers themselves (`tools/gen_checkpoints.py`), plus crafted broken and malicious files.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use cnclip_model::config::{ClipConfig, VisionConfig};
use cnclip_model::weights::{self, CheckpointFormat, WeightsError};
use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models")
}

fn manifest() -> Vec<Value> {
    let text = fs::read_to_string(fixtures().join("manifest.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["fixtures"].as_array().unwrap().clone()
}

fn manifest_config(e: &Value) -> ClipConfig {
    serde_json::from_value(e["config"].clone()).unwrap()
}

fn load(path: &Path) -> weights::Checkpoint {
    weights::load(path).unwrap_or_else(|e| panic!("{e}"))
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Every tensor's name, shape, first values (exactly) and sum against the generator's record.
fn assert_matches_expected(ck: &weights::Checkpoint, expected_file: &str) {
    let text = fs::read_to_string(fixtures().join(expected_file)).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let expected = v["tensors"].as_object().unwrap();
    let names: HashSet<&String> = ck.tensors.keys().collect();
    let want: HashSet<&String> = expected.keys().collect();
    assert_eq!(names, want, "{}: tensor names", ck.source.display());
    for (name, e) in expected {
        let t = &ck.tensors[name];
        assert_eq!(t.dtype(), DType::F32, "{name}");
        let shape: Vec<usize> = serde_json::from_value(e["shape"].clone()).unwrap();
        assert_eq!(t.dims(), shape.as_slice(), "{name}: shape");
        let vals = values(t);
        for (i, x) in e["first"].as_array().unwrap().iter().enumerate() {
            assert_eq!(vals[i], x.as_f64().unwrap() as f32, "{name}[{i}]");
        }
        // Plain and position-weighted sums: the latter catches permuted rows or elements.
        let (mut sum, mut wsum, mut abs) = (0f64, 0f64, 0f64);
        for (i, &x) in vals.iter().enumerate() {
            let x = f64::from(x);
            sum += x;
            wsum += x * ((i % 97) + 1) as f64;
            abs += x.abs();
        }
        for (got, key, scale) in [(sum, "sum", 1.0), (wsum, "wsum", 97.0)] {
            let want = e[key].as_f64().unwrap();
            assert!(
                (got - want).abs() <= 1e-9 * scale * (abs + 1.0),
                "{name}: {key} {got} vs {want}"
            );
        }
    }
}

/// Every file form of every fixture loads, to the manifest's configuration and exact values.
#[test]
fn every_fixture_loads_with_the_manifest_config() {
    let mut checked = 0;
    for e in manifest() {
        let config = manifest_config(&e);
        for (key, format) in [
            ("pt", CheckpointFormat::CnClipPt),
            ("legacy_pt", CheckpointFormat::CnClipPt),
            ("safetensors", CheckpointFormat::Safetensors),
            ("hf_dir", CheckpointFormat::HfDirectory),
        ] {
            let Some(file) = e[key].as_str() else {
                continue;
            };
            let ck = load(&fixtures().join(file));
            assert_eq!(ck.config, config, "{file}");
            assert_eq!(ck.format, format, "{file}");
            assert_matches_expected(&ck, e["expected"].as_str().unwrap());
            checked += 1;
        }
    }
    assert_eq!(checked, 7, "files checked");
}

#[test]
fn module_prefix_is_optional() {
    // vit_tiny.pt stores `module.`-prefixed keys (as the official files do), rn_tiny.pt bare ones.
    let raw = fs::read(fixtures().join("vit_tiny.pt")).unwrap();
    assert!(contains(&raw, b"module.visual.class_embedding"));
    let raw = fs::read(fixtures().join("rn_tiny.pt")).unwrap();
    assert!(!contains(&raw, b"module."));
    for f in ["vit_tiny.pt", "rn_tiny.pt"] {
        let ck = load(&fixtures().join(f));
        assert!(ck.tensors.keys().all(|k| !k.starts_with("module.")));
        assert!(ck.tensors.contains_key("logit_scale"));
    }
}

#[test]
fn pooler_and_num_batches_tracked_are_ignored() {
    let raw = fs::read(fixtures().join("vit_tiny.pt")).unwrap();
    assert!(contains(&raw, b"module.bert.pooler.dense.weight"));
    let ck = load(&fixtures().join("vit_tiny.pt"));
    assert!(!ck.tensors.keys().any(|k| k.contains("pooler")));
    let raw = fs::read(fixtures().join("rn_tiny.pt")).unwrap();
    assert!(contains(&raw, b"num_batches_tracked"));
    let ck = load(&fixtures().join("rn_tiny.pt"));
    assert!(!ck.tensors.keys().any(|k| k.contains("num_batches_tracked")));
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn half_precision_checkpoints_load_as_exact_f32() {
    // vit336_tiny.pt is stored in fp16, rn_tiny.pt in bf16: every loaded f32 value must be exactly
    // representable in the storage type (the conversion is exact), and the values match the
    // generator's record (checked in `every_fixture_loads_with_the_manifest_config`).
    for (file, dtype) in [("vit336_tiny.pt", DType::F16), ("rn_tiny.pt", DType::BF16)] {
        let ck = load(&fixtures().join(file));
        for (name, t) in &ck.tensors {
            assert_eq!(t.dtype(), DType::F32);
            let round = t.to_dtype(dtype).unwrap().to_dtype(DType::F32).unwrap();
            assert_eq!(values(t), values(&round), "{file}: {name}");
        }
    }
}

#[test]
fn head_width_80_comes_from_the_hf_config() {
    let ck = load(&fixtures().join("hf_vit_h80_tiny"));
    let VisionConfig::Vit(v) = &ck.config.vision else {
        panic!("not a ViT")
    };
    assert_eq!((v.width, v.head_width, v.heads()), (160, 80, 2));
    assert_eq!(ck.config.text.num_heads, 3);
    // The same tensors in canonical names, inferred by cn_clip's convention, would get head
    // width 64 (160 is not 1280): the configuration must come from config.json.
    let shapes = ck.shapes();
    assert!(weights::infer_config(&shapes).is_err());
}

#[test]
fn official_preset_tables_match_cn_clip_state_dicts() {
    let text = fs::read_to_string(fixtures().join("preset_state_dicts.json")).unwrap();
    let sd: HashMap<String, Vec<(String, Vec<usize>)>> = serde_json::from_str(&text).unwrap();
    for p in cnclip_model::Preset::ALL {
        let reference: HashMap<String, Vec<usize>> = sd[p.name()]
            .iter()
            .filter(|(n, _)| !n.ends_with("num_batches_tracked"))
            .cloned()
            .collect();
        let ours: HashMap<String, Vec<usize>> =
            weights::expected_tensors(&p.config()).into_iter().collect();
        assert_eq!(ours, reference, "{}", p.name());
        assert_eq!(
            weights::infer_config(&ours).unwrap(),
            p.config(),
            "{}",
            p.name()
        );
        let params: usize = ours
            .iter()
            .filter(|(n, _)| !weights::is_buffer(n))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert_eq!(params, p.config().parameter_count(), "{}", p.name());
    }
}

/// Writes canonical tensors to a safetensors file with candle's writer (no metadata: the
/// architecture is inferred).
fn write_safetensors(path: &Path, tensors: &HashMap<String, Tensor>) {
    candle_core::safetensors::save(tensors, path).unwrap();
}

#[test]
fn missing_tensor_is_an_error_naming_it() {
    let ck = load(&fixtures().join("vit_micro.safetensors"));
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "visual.class_embedding",
        "visual.proj",
        "bert.encoder.layer.0.output.LayerNorm.bias",
        "logit_scale",
    ] {
        let mut t = ck.tensors.clone();
        t.remove(name);
        let path = dir.path().join("missing.safetensors");
        write_safetensors(&path, &t);
        let err = weights::load(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}: tensor {name} is missing", path.display())
        );
        assert!(matches!(err.root(), WeightsError::MissingTensor { name: n } if n == name));
    }
}

#[test]
fn misshaped_tensor_is_an_error_naming_it() {
    let ck = load(&fixtures().join("vit_micro.safetensors"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    let mut t = ck.tensors.clone();
    t.insert(
        "visual.ln_post.weight".into(),
        Tensor::zeros(63, DType::F32, &Device::Cpu).unwrap(),
    );
    write_safetensors(&path, &t);
    let err = weights::load(&path).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: tensor visual.ln_post.weight has shape [63], expected [64]",
            path.display()
        )
    );
    // Transposed: same element count, wrong shape.
    let mut t = ck.tensors.clone();
    let name = "visual.transformer.resblocks.0.mlp.c_fc.weight";
    let tr = t[name].t().unwrap().contiguous().unwrap();
    t.insert(name.into(), tr);
    write_safetensors(&path, &t);
    let err = weights::load(&path).unwrap_err().to_string();
    assert!(err.contains(&format!("tensor {name} has shape")), "{err}");
    // In-memory check of the example from the docs.
    let mut ck = ck;
    let proj = Tensor::zeros((64, 8), DType::F32, &Device::Cpu).unwrap();
    ck.tensors.insert("visual.proj".into(), proj);
    let err = weights::check_complete(&ck).unwrap_err().to_string();
    assert!(
        err.ends_with("tensor visual.proj has shape [64, 8], expected [64, 16]"),
        "{err}"
    );
}

#[test]
fn unexpected_and_duplicate_tensors_are_errors() {
    let ck = load(&fixtures().join("vit_micro.safetensors"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("extra.safetensors");
    let mut t = ck.tensors.clone();
    t.insert(
        "visual.attn_pool_typo".into(),
        Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap(),
    );
    write_safetensors(&path, &t);
    let err = weights::load(&path).unwrap_err().to_string();
    assert!(
        err.ends_with("unexpected tensor visual.attn_pool_typo"),
        "{err}"
    );

    let mut t = ck.tensors.clone();
    t.insert("module.logit_scale".into(), t["logit_scale"].clone());
    write_safetensors(&path, &t);
    let err = weights::load(&path).unwrap_err().to_string();
    assert!(err.contains("logit_scale appears twice"), "{err}");

    // Ignorable names are dropped, with or without `module.`.
    let mut t = ck.tensors.clone();
    let x = Tensor::zeros((64, 64), DType::F32, &Device::Cpu).unwrap();
    t.insert("module.bert.pooler.dense.weight".into(), x.clone());
    t.insert("bert.pooler.dense.weight".into(), x);
    write_safetensors(&path, &t);
    assert_eq!(load(&path).tensors.len(), ck.tensors.len());
}

const MARKER_GLOBALS: [(&str, &str); 4] = [
    ("evil_system.pt", "posix.system"),
    // Protocol 2 writes Python-2-compatible names: `subprocess.Popen` is stored as
    // `commands.Popen` (Python's unpickler maps it back).
    ("evil_popen.pt", "commands.Popen"),
    ("evil_eval.pkl", "builtins.eval"),
    ("evil_system_p0.pkl", "posix.system"),
];

#[test]
fn malicious_pickles_from_python_are_refused() {
    let v: Value =
        serde_json::from_str(&fs::read_to_string(fixtures().join("manifest.json")).unwrap())
            .unwrap();
    let marker_prefix = v["evil_marker_prefix"].as_str().unwrap().to_string();
    for (file, global) in MARKER_GLOBALS {
        let path = fixtures().join(file);
        let err = weights::load(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}: refusing pickle global {global}", path.display())
        );
        assert!(matches!(err.root(), WeightsError::ForbiddenGlobal { global: g } if g == global));
    }
    for tag in ["system", "popen", "eval", "system_p0"] {
        assert!(!Path::new(&format!("{marker_prefix}{tag}")).exists());
    }
}

/// A torch-style zip around `pickle`, with one storage entry.
fn torch_zip(path: &Path, pickle: &[u8]) {
    let file = fs::File::create(path).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", opts).unwrap();
    zip.write_all(pickle).unwrap();
    zip.start_file("archive/data/0", opts).unwrap();
    zip.write_all(&[0u8; 16]).unwrap();
    zip.finish().unwrap();
}

#[test]
fn crafted_malicious_pickles_are_refused_and_nothing_runs() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pwned");
    let cmd = format!("touch {}", marker.display());
    let arg = {
        let mut v = vec![b'X'];
        v.extend((cmd.len() as u32).to_le_bytes());
        v.extend(cmd.as_bytes());
        v
    };
    // A state dict whose second value is `os.system(cmd)`, as GLOBAL (protocol 2) and as
    // STACK_GLOBAL (protocol 4), and `builtins.eval` / `subprocess.Popen` at the top level.
    let mut p2 =
        b"\x80\x02}q\x00(X\x01\x00\x00\x00aK\x01X\x01\x00\x00\x00bcposix\nsystem\n".to_vec();
    p2.extend(&arg);
    p2.extend(b"\x85Ru.");
    let mut p4 =
        b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x8c\x06system\x93".to_vec();
    p4.extend(&arg);
    p4.extend(b"\x85R.");
    let mut eval = b"\x80\x02c__builtin__\neval\n".to_vec();
    eval.extend(&arg);
    eval.extend(b"\x85R.");
    let mut popen = b"\x80\x02csubprocess\nPopen\n".to_vec();
    popen.extend(&arg);
    popen.extend(b"\x85R.");
    let cases: [(&str, &[u8], &str); 4] = [
        ("p2", &p2, "posix.system"),
        ("p4", &p4, "os.system"),
        ("eval", &eval, "__builtin__.eval"),
        ("popen", &popen, "subprocess.Popen"),
    ];
    for (tag, pickle, global) in cases {
        for zipped in [false, true] {
            let path = dir.path().join(format!("{tag}-{zipped}.pt"));
            if zipped {
                torch_zip(&path, pickle);
            } else {
                fs::write(&path, pickle).unwrap();
            }
            let err = weights::load(&path).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("{}: refusing pickle global {global}", path.display())
            );
        }
    }
    assert!(!marker.exists(), "a payload ran");
}

/// A protocol-2 state-dict pickle as torch writes it: `{name: _rebuild_tensor_v2(storage, offset,
/// size, stride, False, {})}` with storage `('storage', FloatStorage, '0', 'cpu', numel)`.
fn state_dict_pickle(name: &str, numel: u64, offset: u64, size: &[u64], stride: &[u64]) -> Vec<u8> {
    fn long(v: u64) -> Vec<u8> {
        let mut b = vec![0x8a, 8];
        b.extend(v.to_le_bytes());
        b
    }
    fn string(s: &str) -> Vec<u8> {
        let mut b = vec![b'X'];
        b.extend((s.len() as u32).to_le_bytes());
        b.extend(s.as_bytes());
        b
    }
    let mut p = b"\x80\x02}(".to_vec();
    p.extend(string(name));
    p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n((");
    p.extend(string("storage"));
    p.extend(b"ctorch\nFloatStorage\n");
    p.extend(string("0"));
    p.extend(string("cpu"));
    p.extend(long(numel));
    p.extend(b"tQ");
    p.extend(long(offset));
    p.push(b'(');
    size.iter().for_each(|&v| p.extend(long(v)));
    p.extend(b"t(");
    stride.iter().for_each(|&v| p.extend(long(v)));
    p.extend(b"t\x89}tRu.");
    p
}

#[test]
fn storage_bounds_are_checked_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    // (size, stride, storage elements, offset, expected message)
    type Case = (&'static [u64], &'static [u64], u64, u64, &'static str);
    let cases: [Case; 4] = [
        // A broadcast view with 2^40 elements over a 4-element storage.
        (&[1 << 40], &[0], 4, 0, "more elements than its storage"),
        // Sizes whose product overflows.
        (
            &[1 << 40, 1 << 40],
            &[0, 0],
            4,
            0,
            "more elements than its storage",
        ),
        // A view reaching past the end of its storage.
        (
            &[2, 2],
            &[2, 1],
            4,
            1,
            "reaches past the end of its storage",
        ),
        // The pickle claims more elements than the zip entry holds (16 bytes = 4 floats).
        (
            &[1000],
            &[1],
            1000,
            0,
            "holds 4 elements, the pickle says 1000",
        ),
    ];
    for (i, (size, stride, numel, offset, msg)) in cases.into_iter().enumerate() {
        let path = dir.path().join(format!("bounds{i}.pt"));
        torch_zip(&path, &state_dict_pickle("x", numel, offset, size, stride));
        let err = weights::load(&path).unwrap_err().to_string();
        assert!(err.starts_with(&path.display().to_string()), "{err}");
        assert!(err.contains(msg), "case {i}: {err}");
    }
    // A well-formed one: read (then refused as an incomplete model, naming what it lacks).
    let path = dir.path().join("ok.pt");
    torch_zip(&path, &state_dict_pickle("x", 4, 0, &[2, 2], &[1, 2]));
    let err = weights::load(&path).unwrap_err().to_string();
    assert!(
        err.ends_with("tensor visual.conv1.weight is missing"),
        "{err}"
    );
}

#[test]
fn truncated_or_corrupt_files_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    for file in [
        "rn_tiny.pt",
        "vit_micro_legacy.pt",
        "vit_micro.safetensors",
        "hf_micro/model.safetensors",
    ] {
        let data = fs::read(fixtures().join(file)).unwrap();
        let n = data.len();
        for cut in [0, 1, 10, 100, n / 3, n / 2, n - 200, n - 22, n - 1] {
            let path = dir.path().join(format!("cut{cut}.bin"));
            fs::write(&path, &data[..cut]).unwrap();
            let err = weights::load(&path).unwrap_err().to_string();
            assert!(
                err.starts_with(&path.display().to_string()),
                "{file} cut at {cut}: {err}"
            );
        }
    }
    // Flipped bytes inside the zip: a storage (CRC mismatch) and the pickle.
    let data = fs::read(fixtures().join("rn_tiny.pt")).unwrap();
    let pkl_at = find(&data, b"rn_tiny/data.pkl").unwrap() + 200;
    let storage_at = data.len() / 2;
    for at in [pkl_at, storage_at] {
        let mut bad = data.clone();
        for b in &mut bad[at..at + 8] {
            *b ^= 0x5a;
        }
        let path = dir.path().join("flipped.pt");
        fs::write(&path, &bad).unwrap();
        let err = weights::load(&path).unwrap_err().to_string();
        assert!(err.starts_with(&path.display().to_string()), "{err}");
    }
    // Not a checkpoint at all.
    let path = dir.path().join("notes.txt");
    fs::write(&path, "hello, world").unwrap();
    let err = weights::load(&path).unwrap_err().to_string();
    assert!(err.contains("not a recognised checkpoint"), "{err}");
    let err = weights::load(&dir.path().join("absent.pt"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("absent.pt: cannot open"), "{err}");
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn assert_same_tensors(a: &weights::Checkpoint, b: &weights::Checkpoint) {
    assert_eq!(a.config, b.config);
    let names: HashSet<&String> = a.tensors.keys().collect();
    assert_eq!(names, b.tensors.keys().collect::<HashSet<_>>());
    for (name, t) in &a.tensors {
        assert_eq!(t.dims(), b.tensors[name].dims(), "{name}");
        let (x, y) = (values(t), values(&b.tensors[name]));
        assert!(
            x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
            "{name} differs"
        );
    }
}

/// `save_hf` → `load` gives back identical tensors and configuration, for every fixture; the
/// converted `model.safetensors` alone also loads exactly (configuration from its metadata).
/// With `CNCLIP_CONVERT_OUT=DIR`, the converted directories are kept in `DIR/<name>` for
/// `tools/check_convert.py`.
#[test]
fn convert_round_trip() {
    let keep = std::env::var_os("CNCLIP_CONVERT_OUT").map(PathBuf::from);
    let tmp = tempfile::tempdir().unwrap();
    for e in manifest() {
        let name = e["name"].as_str().unwrap();
        let file = ["pt", "hf_dir", "safetensors"]
            .iter()
            .find_map(|k| e[*k].as_str())
            .unwrap();
        let ck = load(&fixtures().join(file));
        let out = keep.as_deref().unwrap_or(tmp.path()).join(name);
        weights::save_hf(&ck, &out).unwrap();
        let back = load(&out);
        assert_eq!(back.format, CheckpointFormat::HfDirectory);
        assert_same_tensors(&ck, &back);
        let single = load(&out.join("model.safetensors"));
        assert_same_tensors(&ck, &single);

        let config: Value =
            serde_json::from_str(&fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
        match ck.config.vision {
            VisionConfig::Vit(_) => {
                assert_eq!(config["model_type"], "chinese_clip", "{name}");
                assert_eq!(single.format, CheckpointFormat::HfDirectory);
            }
            VisionConfig::Resnet(_) => {
                assert_eq!(config["vision"]["kind"], "resnet", "{name}");
                assert_eq!(single.format, CheckpointFormat::Safetensors);
            }
        }
    }
}

#[test]
fn hf_directory_problems_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("hf_micro");
    let copy = |to: &Path| {
        fs::create_dir_all(to).unwrap();
        for f in ["config.json", "model.safetensors"] {
            fs::copy(src.join(f), to.join(f)).unwrap();
        }
    };
    let config_of = |d: &Path| -> Value {
        serde_json::from_str(&fs::read_to_string(d.join("config.json")).unwrap()).unwrap()
    };

    // An activation the model does not implement: refused, naming config.json.
    let d = dir.path().join("gelu");
    copy(&d);
    let mut c = config_of(&d);
    c["vision_config"]["hidden_act"] = "gelu".into();
    fs::write(d.join("config.json"), c.to_string()).unwrap();
    let err = weights::load(&d).unwrap_err().to_string();
    assert!(
        err.starts_with(&d.join("config.json").display().to_string()),
        "{err}"
    );
    assert!(err.contains("vision_config.hidden_act \"gelu\""), "{err}");

    // config.json says 2 text layers, the weights have 1.
    let d = dir.path().join("layers");
    copy(&d);
    let mut c = config_of(&d);
    c["text_config"]["num_hidden_layers"] = 2.into();
    fs::write(d.join("config.json"), c.to_string()).unwrap();
    let err = weights::load(&d).unwrap_err().to_string();
    assert!(
        err.ends_with("tensor bert.encoder.layer.1.attention.self.query.weight is missing"),
        "{err}"
    );

    // No config.json.
    let d = dir.path().join("noconfig");
    copy(&d);
    fs::remove_file(d.join("config.json")).unwrap();
    let err = weights::load(&d).unwrap_err().to_string();
    assert!(err.contains("without config.json"), "{err}");
    let err = weights::load(&d.join("model.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("need the config.json beside them"), "{err}");

    // A q/k/v part missing from the transformers names.
    let ck = load(&src);
    let mut hf: HashMap<String, Tensor> = HashMap::new();
    let st = fs::read(src.join("model.safetensors")).unwrap();
    for (n, t) in candle_core::safetensors::load_buffer(&st, &Device::Cpu).unwrap() {
        hf.insert(n, t);
    }
    hf.remove("vision_model.encoder.layers.0.self_attn.k_proj.bias");
    let d = dir.path().join("qkv");
    copy(&d);
    candle_core::safetensors::save(&hf, d.join("model.safetensors")).unwrap();
    let err = weights::load(&d).unwrap_err().to_string();
    assert!(
        err.ends_with("tensor vision_model.encoder.layers.0.self_attn.k_proj.bias is missing"),
        "{err}"
    );
    assert!(ck
        .tensors
        .contains_key("visual.transformer.resblocks.0.attn.in_proj_bias"));
}

#[test]
fn var_builder_serves_canonical_paths() {
    let ck = load(&fixtures().join("vit_tiny.pt"));
    let vb = ck.var_builder(DType::F32, &Device::Cpu);
    let proj = vb.pp("visual").get((64, 64), "proj").unwrap();
    assert_eq!(values(&proj), values(&ck.tensors["visual.proj"]));
    let q = vb
        .pp("bert")
        .pp("encoder.layer.1.attention.self.query")
        .get((64, 64), "weight")
        .unwrap();
    assert_eq!(q.dims(), &[64, 64]);
    assert!(vb.pp("visual").get(64, "no_such_tensor").is_err());
    let scale = vb.get((), "logit_scale").unwrap();
    assert_eq!(scale.dims(), &[] as &[usize]);
}

/// Every fixture file in every format, loaded with one tower left out: same configuration and
/// fingerprint as the whole file, the kept tower's tensors identical, the other tower's
/// tensors present only as shape + first values (for files in cn_clip's names; a file in
/// transformers' names is read whole).
#[test]
fn a_tower_can_be_left_out_without_changing_the_identity() {
    use weights::Towers;
    let mut partial = 0;
    for e in manifest() {
        for key in ["pt", "legacy_pt", "safetensors", "hf_dir"] {
            let Some(file) = e[key].as_str() else {
                continue;
            };
            let path = fixtures().join(file);
            let full = load(&path);
            assert!(full.left_out.is_empty());
            assert!(full.has(Towers::Both));
            for (towers, kept) in [(Towers::Text, Towers::Text), (Towers::Image, Towers::Image)] {
                let ck = weights::load_with(&path, towers).unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(ck.config, full.config, "{file} {towers:?}");
                assert_eq!(ck.shapes(), full.shapes(), "{file} {towers:?}");
                assert_eq!(
                    ck.fingerprint().unwrap(),
                    full.fingerprint().unwrap(),
                    "{file} {towers:?}"
                );
                weights::check_complete(&ck).unwrap();
                assert!(ck.has(kept), "{file} {towers:?}");
                for (name, t) in &ck.tensors {
                    assert_eq!(values(t), values(&full.tensors[name]), "{file}: {name}");
                }
                if key == "hf_dir" {
                    assert!(ck.left_out.is_empty(), "{file}: read whole");
                    continue;
                }
                assert!(!ck.left_out.is_empty(), "{file} {towers:?}");
                assert!(!ck.has(Towers::Both));
                for (name, head) in &ck.left_out {
                    assert!(towers.leaves_out(name), "{file}: {name} left out");
                    let whole = values(&full.tensors[name]);
                    assert_eq!(head.dims, full.tensors[name].dims(), "{name}");
                    assert_eq!(head.values, whole[..whole.len().min(weights::HEAD_LEN)]);
                }
                let out = tempfile::tempdir().unwrap();
                let err = weights::save_hf(&ck, out.path()).unwrap_err().to_string();
                assert!(err.contains("left out"), "{err}");
                partial += 1;
            }
        }
    }
    assert_eq!(partial, 10, "partial loads checked");
}

/// A model built from one tower encodes exactly as the whole model does, keeps its
/// fingerprint, and refuses to encode with the tower it lacks.
#[test]
fn one_tower_models_encode_like_the_whole_model() {
    use cnclip_model::model::{ChineseClip, Towers};
    for file in ["vit_tiny.pt", "rn_tiny.pt", "hf_micro"] {
        let path = fixtures().join(file);
        let cpu = Device::Cpu;
        let full = ChineseClip::load(&path, &cpu, DType::F32).unwrap();
        let text = ChineseClip::load_towers(&path, &cpu, DType::F32, Towers::Text).unwrap();
        let image = ChineseClip::load_towers(&path, &cpu, DType::F32, Towers::Image).unwrap();
        assert_eq!(text.fingerprint(), full.fingerprint(), "{file}");
        assert_eq!(image.fingerprint(), full.fingerprint(), "{file}");
        // hf_micro's vocabulary has 128 entries: [CLS] and [SEP] only.
        let texts: &[&str] = if file == "hf_micro" {
            &[""]
        } else {
            &["一只小猫", ""]
        };
        assert_eq!(
            text.encode_texts(texts).unwrap(),
            full.encode_texts(texts).unwrap()
        );
        let s = full.image_size();
        let pixels: Vec<f32> = (0..3 * s * s).map(|i| (i % 7) as f32 / 7.0 - 0.5).collect();
        let pixels = [pixels];
        assert_eq!(
            image.encode_image_data(&pixels).unwrap(),
            full.encode_image_data(&pixels).unwrap()
        );
        let err = text.encode_image_data(&pixels).unwrap_err().to_string();
        assert!(err.contains("without its image tower"), "{err}");
        let err = image.encode_texts(texts).unwrap_err().to_string();
        assert!(err.contains("without its text tower"), "{err}");
        // Quantizing a one-tower model quantizes what is there.
        let q = text.quantize().unwrap();
        assert!(q.encode_texts(texts).is_ok());
    }
}
