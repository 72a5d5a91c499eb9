//! Untrusted inputs return errors, never panics or aborts: mutated measurement files, `gmm:`
//! mixtures and ADM checkpoints (safetensors and PyTorch pickle), each read with the library's
//! loaders under `catch_unwind`. A huge allocation would abort the whole process, so the size
//! checks must fail first.
//!
//! `fuzz_files` runs a fixed-seed set of cases (a few seconds in release);
//! `fuzz_files_long` (ignored) runs `DAPS_FUZZ_CASES` cases (default 20,000) from
//! `DAPS_FUZZ_SEED`.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{fixture, tmp_dir};
use daps::task::{MeasurementFile, Task, TaskFiles, TaskSpec};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Map, Value};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

// ---------------------------------------------------------------------------------------------
// Safetensors files as (header, data), to edit and write back

struct St {
    header: Map<String, Value>,
    data: Vec<u8>,
}

fn parse_st(bytes: &[u8]) -> St {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    St {
        header: header.as_object().unwrap().clone(),
        data: bytes[8 + n..].to_vec(),
    }
}

fn write_st(st: &St) -> Vec<u8> {
    let json = serde_json::to_string(&st.header).unwrap();
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(json.as_bytes());
    out.extend_from_slice(&st.data);
    out
}

fn tensor_names(st: &St) -> Vec<String> {
    let mut v: Vec<String> = st
        .header
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    v.sort();
    v
}

/// Re-encodes tensor `name` (stored as F32) in `dtype`, with consistent offsets.
fn reencode(st: &St, name: &str, dtype: &str) -> Vec<u8> {
    let mut names = tensor_names(st);
    names.sort_by_key(|n| st.header[n]["data_offsets"][0].as_u64().unwrap());
    let mut data = Vec::new();
    let mut header = st.header.clone();
    for n in &names {
        let info = &st.header[n];
        let (s, e) = (
            info["data_offsets"][0].as_u64().unwrap() as usize,
            info["data_offsets"][1].as_u64().unwrap() as usize,
        );
        let raw = &st.data[s..e];
        let start = data.len();
        if n == name && info["dtype"] == "F32" {
            let vals = raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()));
            for v in vals {
                match dtype {
                    "F64" => data.extend((v as f64).to_le_bytes()),
                    "I32" => data.extend((v.round() as i32).to_le_bytes()),
                    "I64" => data.extend((v.round() as i64).to_le_bytes()),
                    "U8" => data.push(v.clamp(0.0, 255.0) as u8),
                    "F16" | "BF16" => {
                        let b = v.to_bits();
                        data.extend(((b >> 16) as u16).to_le_bytes())
                    }
                    _ => data.extend(v.to_le_bytes()),
                }
            }
            header[n]["dtype"] = json!(dtype);
        } else {
            data.extend_from_slice(raw);
        }
        header[n]["data_offsets"] = json!([start, data.len()]);
    }
    write_st(&St { header, data })
}

const HUGE: [u64; 8] = [0, 1, 17, 1_000_000, 1 << 31, 1 << 40, 1 << 62, u64::MAX];
const DTYPES: [&str; 10] = [
    "I32", "F64", "U8", "F16", "BF16", "I64", "BOOL", "I8", "Q4", "F32",
];

fn pick<'a, T>(rng: &mut ChaCha8Rng, v: &'a [T]) -> &'a T {
    &v[rng.random_range(0..v.len())]
}

/// A weird JSON value for a parameter.
fn weird_value(rng: &mut ChaCha8Rng) -> Value {
    match rng.random_range(0..14) {
        0 => json!(0),
        1 => json!(-1),
        2 => json!(1e10),
        3 => json!(1e300),
        4 => json!(1u64 << 40),
        5 => json!(u64::MAX),
        6 => json!("x"),
        7 => Value::Null,
        8 => json!(3.5),
        9 => json!(2),
        10 => json!(1_000_000),
        11 => json!(true),
        12 => json!([1, 2]),
        _ => json!(1e-300),
    }
}

/// Replaces metadata `key` of a measurement file by a weird value (or removes it).
fn weird_meta(rng: &mut ChaCha8Rng, key: &str, old: &str) -> Option<String> {
    let common = ["", "null", "{}", "[]", "1e400", "-1", "NaN"];
    let v = match key {
        "shape" => match rng.random_range(0..12) {
            0 => "[1, 1000000, 1000000]".to_string(),
            1 => "[1099511627776, 1, 1]".into(),
            2 => "[0, 16, 16]".into(),
            3 => "[3, 8192, 8192]".into(),
            4 => "[16, 8192, 8192]".into(),
            5 => "[3, -1, 16]".into(),
            6 => "[3, 16]".into(),
            7 => "[2, 16, 16]".into(),
            8 => "[3, 32, 32]".into(),
            9 => "[17, 16, 16]".into(),
            10 => "[1, 1, 4294967296]".into(),
            _ => "[3, 16, 16]".into(),
        },
        "sigma_y" => pick(
            rng,
            &["1e400", "-1", "NaN", "inf", "2.5", "0", "1e-300", "x"],
        )
        .to_string(),
        "operator" => {
            let mut op: Value = serde_json::from_str(old).ok()?;
            let obj = op.as_object_mut()?;
            let keys: Vec<String> = obj.keys().cloned().collect();
            match rng.random_range(0..5) {
                0 | 1 => {
                    let k = pick(rng, &keys).clone();
                    obj.insert(k, weird_value(rng));
                }
                2 => {
                    let k = pick(rng, &keys).clone();
                    obj.remove(&k);
                }
                3 => {
                    obj.insert("bogus".into(), json!(1));
                }
                _ => {
                    let t = pick(
                        rng,
                        &[
                            "sr4",
                            "gaussian-blur",
                            "mri-4x",
                            "inpaint-box",
                            "phase-retrieval",
                            "hdr",
                            "nope",
                        ],
                    );
                    obj.insert("task".into(), json!(t));
                }
            }
            op.to_string()
        }
        "task" => pick(rng, &["sr4", "mri-8x", "nonlinear-blur", "zzz"]).to_string(),
        "seed" => pick(rng, &["-1", "1e3", "18446744073709551616"]).to_string(),
        "version" => pick(rng, &["0", "2", "x"]).to_string(),
        _ => pick(rng, &common).to_string(),
    };
    if rng.random_range(0..10) == 0 {
        None
    } else {
        Some(v)
    }
}

/// One mutation of a safetensors file: the bytes and a description.
fn mutate_safetensors(bytes: &[u8], rng: &mut ChaCha8Rng) -> (Vec<u8>, String) {
    let st = parse_st(bytes);
    let hlen = 8 + (bytes.len() - st.data.len());
    let pos = |rng: &mut ChaCha8Rng| {
        if rng.random_bool(0.6) {
            rng.random_range(0..hlen)
        } else {
            rng.random_range(0..bytes.len())
        }
    };
    let names = tensor_names(&st);
    match rng.random_range(0..10) {
        9 => {
            // a consistent reshape: the same elements in another factorisation
            let mut st = St {
                header: st.header.clone(),
                data: st.data.clone(),
            };
            let name = pick(rng, &names).clone();
            let n: u64 = st.header[&name]["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .product();
            let mut dims = Vec::new();
            let mut rest = n;
            for _ in 0..rng.random_range(0..4) {
                let divisors: Vec<u64> = (1..=rest.min(64)).filter(|d| rest % d == 0).collect();
                let d = *pick(rng, &divisors);
                dims.push(d);
                rest /= d;
            }
            dims.push(rest);
            if rng.random_bool(0.3) {
                dims.push(1);
            }
            st.header[&name]["shape"] = json!(dims);
            (write_st(&st), format!("tensor {name} reshaped to {dims:?}"))
        }
        0 => {
            let mut b = bytes.to_vec();
            let k = rng.random_range(1..=8);
            let mut at = Vec::new();
            for _ in 0..k {
                let p = pos(rng);
                let bit = rng.random_range(0..8);
                b[p] ^= 1 << bit;
                at.push(format!("{p}.{bit}"));
            }
            (b, format!("bit flips at {}", at.join(",")))
        }
        1 => {
            let mut b = bytes.to_vec();
            let p = pos(rng);
            let n = rng.random_range(1..=16).min(b.len() - p);
            for x in &mut b[p..p + n] {
                *x = rng.random();
            }
            (b, format!("{n} random bytes at {p}"))
        }
        2 => {
            let n = rng.random_range(0..bytes.len());
            (bytes[..n].to_vec(), format!("truncated to {n} bytes"))
        }
        3 => {
            let mut st = St {
                header: st.header.clone(),
                data: st.data.clone(),
            };
            let name = pick(rng, &names).clone();
            let shape = st.header[&name]["shape"].as_array().unwrap().clone();
            let what;
            let mut shape = shape;
            match rng.random_range(0..3) {
                0 if !shape.is_empty() => {
                    let i = rng.random_range(0..shape.len());
                    let v = *pick(rng, &HUGE);
                    shape[i] = json!(v);
                    what = format!("shape[{i}] = {v}");
                }
                1 => {
                    shape.push(json!(*pick(rng, &HUGE)));
                    what = "extra dim".into();
                }
                _ => {
                    shape.clear();
                    what = "scalar shape".into();
                }
            }
            st.header[&name]["shape"] = Value::Array(shape);
            (write_st(&st), format!("tensor {name}: {what}"))
        }
        4 => {
            let mut st = St {
                header: st.header.clone(),
                data: st.data.clone(),
            };
            let name = pick(rng, &names).clone();
            let d = *pick(rng, &DTYPES);
            st.header[&name]["dtype"] = json!(d);
            (
                write_st(&st),
                format!("tensor {name}: dtype {d} (offsets kept)"),
            )
        }
        5 => {
            let mut st = St {
                header: st.header.clone(),
                data: st.data.clone(),
            };
            let name = pick(rng, &names).clone();
            let (a, b) = (*pick(rng, &HUGE), *pick(rng, &HUGE));
            let offsets = match rng.random_range(0..3) {
                0 => json!([a, b]),
                1 => {
                    let o = &st.header[&name]["data_offsets"];
                    json!([o[1].clone(), o[0].clone()])
                }
                _ => json!([a]),
            };
            st.header[&name]["data_offsets"] = offsets.clone();
            (
                write_st(&st),
                format!("tensor {name}: data_offsets {offsets}"),
            )
        }
        6 => {
            let name = pick(rng, &names).clone();
            let d = *pick(rng, &DTYPES[..6]);
            (
                reencode(&st, &name, d),
                format!("tensor {name} re-encoded as {d}"),
            )
        }
        7 => {
            let mut st = St {
                header: st.header.clone(),
                data: st.data.clone(),
            };
            let name = pick(rng, &names).clone();
            st.header.remove(&name);
            (write_st(&st), format!("tensor {name} removed"))
        }
        _ => {
            let mut st = St {
                header: st.header.clone(),
                data: st.data.clone(),
            };
            let Some(Value::Object(meta)) = st.header.get_mut("__metadata__") else {
                st.header.insert("__metadata__".into(), json!(7));
                return (write_st(&st), "__metadata__ = 7".into());
            };
            let keys: Vec<String> = meta.keys().cloned().collect();
            let key = pick(rng, &keys).clone();
            let old = meta[&key].as_str().unwrap_or("").to_string();
            let what = match weird_meta(rng, &key, &old) {
                Some(v) => {
                    let w = format!("metadata {key} = {v}");
                    meta.insert(key, json!(v));
                    w
                }
                None => {
                    meta.remove(&key);
                    format!("metadata {key} removed")
                }
            };
            (write_st(&st), what)
        }
    }
}

/// One mutation of a PyTorch zip checkpoint, aimed at its pickle (`data.pkl`) most of the time.
fn mutate_pickle(bytes: &[u8], pkl: (usize, usize), rng: &mut ChaCha8Rng) -> (Vec<u8>, String) {
    let mut b = bytes.to_vec();
    let in_pkl = |rng: &mut ChaCha8Rng| rng.random_range(pkl.0..pkl.1);
    match rng.random_range(0..5) {
        0 | 1 => {
            let k = rng.random_range(1..=4);
            let mut at = Vec::new();
            for _ in 0..k {
                let p = in_pkl(rng);
                let bit = rng.random_range(0..8);
                b[p] ^= 1 << bit;
                at.push(format!("{p}.{bit}"));
            }
            (b, format!("pickle bit flips at {}", at.join(",")))
        }
        2 => {
            let p = in_pkl(rng);
            let v: u8 = rng.random();
            b[p] = v;
            (b, format!("pickle byte {p} = {v}"))
        }
        3 => {
            let n = rng.random_range(0..bytes.len());
            (bytes[..n].to_vec(), format!("truncated to {n} bytes"))
        }
        _ => {
            // anywhere else: zip headers and the central directory at the end
            let p = if rng.random_bool(0.5) {
                rng.random_range(bytes.len().saturating_sub(4096)..bytes.len())
            } else {
                rng.random_range(0..pkl.0.max(1))
            };
            b[p] ^= 1 << rng.random_range(0..8);
            (b, format!("zip bit flip at {p}"))
        }
    }
}

/// The byte range of `data.pkl`'s contents in a (stored, uncompressed) torch zip.
fn pickle_range(bytes: &[u8]) -> (usize, usize) {
    let name = b"data.pkl";
    let at = bytes
        .windows(name.len())
        .position(|w| w == name)
        .expect("a data.pkl entry");
    // local file header: 30 bytes, then name, then extra field; `at` is inside the name
    let header = bytes[..at]
        .windows(4)
        .rposition(|w| w == b"PK\x03\x04")
        .unwrap();
    let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]) as usize;
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap()) as usize;
    let start = header + 30 + u16_at(header + 26) + u16_at(header + 28);
    let size = u32_at(header + 18);
    (start, start + size.max(1))
}

// ---------------------------------------------------------------------------------------------
// The seeds

struct Seeds {
    dir: PathBuf,
    measurements: Vec<(String, Vec<u8>)>,
    gmm: Vec<u8>,
    adm_st: Vec<u8>,
    adm_pt: Vec<u8>,
    pkl: (usize, usize),
    config: PathBuf,
}

fn seeds(dir: &Path) -> Seeds {
    let mut measurements = Vec::new();
    for (task, c, params) in [
        ("inpaint-box", 3, vec![]),
        ("gaussian-blur", 3, vec![]),
        ("sr4", 3, vec![]),
        ("mri-4x", 2, vec![("coils", "2")]),
        ("phase-retrieval", 1, vec![]),
    ] {
        let mut spec = TaskSpec::defaults(task, 16, 16, &TaskFiles::default()).unwrap();
        for (k, v) in params {
            spec = spec.set(k, v).unwrap();
        }
        let task_built = Task::build(spec, [c, 16, 16]).unwrap();
        let x = (common::randn(&[1, c, 16, 16], 3) * 0.5).unwrap();
        let mf = MeasurementFile::simulate(task_built, &x, 0.05, 1).unwrap();
        let p = dir.join(format!("{task}.safetensors"));
        mf.save(&p).unwrap();
        MeasurementFile::load(&p).expect("the seed measurement loads");
        measurements.push((task.to_string(), std::fs::read(&p).unwrap()));
    }
    // a two-component diagonal mixture on 1×8×8
    let d = 64;
    let t = |v: Vec<f32>, shape: Vec<usize>| Tensor::from_vec(v, shape, &Device::Cpu).unwrap();
    let means: Vec<f32> = (0..2 * d).map(|i| (i as f32 * 0.37).sin() * 0.3).collect();
    let vars: Vec<f32> = (0..2 * d).map(|i| 0.02 + 0.01 * (i % 5) as f32).collect();
    let tensors = [
        ("weights".to_string(), t(vec![0.6, 0.4], vec![2])),
        ("means".to_string(), t(means, vec![2, 1, 8, 8])),
        ("variances".to_string(), t(vars, vec![2, d])),
    ];
    let gp = dir.join("gmm.safetensors");
    candle_core::safetensors::save(&tensors.into_iter().collect(), &gp).unwrap();
    let config = dir.join("tiny_config.json");
    std::fs::copy(fixture("adm_unet/tiny_config.json"), &config).unwrap();
    let adm_pt = std::fs::read(fixture("adm_unet/tiny_weights.pt")).unwrap();
    let pkl = pickle_range(&adm_pt);
    Seeds {
        dir: dir.to_path_buf(),
        measurements,
        gmm: std::fs::read(&gp).unwrap(),
        adm_st: std::fs::read(fixture("adm_unet/tiny_weights.safetensors")).unwrap(),
        adm_pt,
        pkl,
        config,
    }
}

// ---------------------------------------------------------------------------------------------
// The cases

/// What a case reads: a measurement file, a mixture, or ADM weights.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Measurement(usize),
    Gmm,
    AdmSafetensors,
    AdmPickle,
}

/// Loads the mutated file (and uses what loads), returning whether it loaded.
fn load(kind: Kind, path: &Path, config: &Path) -> bool {
    match kind {
        Kind::Measurement(_) => match MeasurementFile::load(path) {
            Ok(mf) => {
                // what loads must work: the operator and its preview
                let [c, h, w] = mf.task.shape();
                let x = Tensor::zeros((1, c, h, w), DType::F32, &Device::Cpu).unwrap();
                let _ = daps::operator::Operator::forward(&mf.task, &x);
                let _ = mf.task.preview(&mf.y);
                true
            }
            Err(_) => false,
        },
        Kind::Gmm => {
            let spec = format!("gmm:{}", path.display());
            match daps::prior::load(Some(&spec), &Device::Cpu) {
                Ok(p) => {
                    let x = Tensor::zeros((1, 1, 8, 8), DType::F32, &Device::Cpu).unwrap();
                    let _ = p.denoise(&x, 0.5);
                    true
                }
                Err(_) => false,
            }
        }
        Kind::AdmSafetensors | Kind::AdmPickle => {
            let spec = format!("adm:{}:{}", path.display(), config.display());
            daps::prior::load(Some(&spec), &Device::Cpu).is_ok()
        }
    }
}

/// The first panicking case, if any, and the counts (cases, loaded).
struct Outcome {
    cases: usize,
    loaded: usize,
    /// Panics the library caught itself and returned as errors (candle's pickle reader).
    caught_inside: usize,
    panics: Vec<String>,
}

static PANIC_MSG: Mutex<Option<String>> = Mutex::new(None);

thread_local! {
    static IN_CASE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn run_cases(n: usize, seed: u64) -> Outcome {
    let dir = tmp_dir("fuzz", &format!("{seed}-{n}"));
    let s = seeds(&dir);
    // Record panic messages instead of printing them (caught panics inside the library, e.g.
    // in candle's pickle reader, are errors by design).
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if IN_CASE.with(|c| c.get()) {
            let msg = format!("{info}");
            *PANIC_MSG.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg);
        } else {
            prev(info)
        }
    }));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Outcome {
        cases: 0,
        loaded: 0,
        caught_inside: 0,
        panics: Vec::new(),
    };
    let nm = s.measurements.len();
    for i in 0..n {
        // 70% measurements, 15% mixtures, 15% ADM checkpoints
        let r = rng.random_range(0..100);
        let kind = match r {
            0..70 => Kind::Measurement(i % nm),
            70..85 => Kind::Gmm,
            85..92 => Kind::AdmSafetensors,
            _ => Kind::AdmPickle,
        };
        let (bytes, what, ext, label) = match kind {
            Kind::Measurement(m) => {
                let (task, b) = &s.measurements[m];
                let (b, w) = mutate_safetensors(b, &mut rng);
                (b, w, "safetensors", task.clone())
            }
            Kind::Gmm => {
                let (b, w) = mutate_safetensors(&s.gmm, &mut rng);
                (b, w, "safetensors", "gmm".into())
            }
            Kind::AdmSafetensors => {
                let (b, w) = mutate_safetensors(&s.adm_st, &mut rng);
                (b, w, "safetensors", "adm".into())
            }
            Kind::AdmPickle => {
                let (b, w) = mutate_pickle(&s.adm_pt, s.pkl, &mut rng);
                (b, w, "pt", "adm".into())
            }
        };
        let path = s.dir.join(format!("case.{ext}"));
        std::fs::write(&path, &bytes).unwrap();
        IN_CASE.with(|c| c.set(true));
        let r = catch_unwind(AssertUnwindSafe(|| load(kind, &path, &s.config)));
        IN_CASE.with(|c| c.set(false));
        let caught = PANIC_MSG.lock().unwrap_or_else(|e| e.into_inner()).take();
        out.cases += 1;
        match r {
            Ok(loaded) => {
                out.loaded += loaded as usize;
                out.caught_inside += caught.is_some() as usize;
            }
            Err(_) => {
                let keep = dir.join(format!("panic-{i}.{ext}"));
                std::fs::write(&keep, &bytes).unwrap();
                out.panics.push(format!(
                    "case {i} ({label} {kind:?}: {what}; kept as {}): {}",
                    keep.display(),
                    caught.unwrap_or_default()
                ));
            }
        }
    }
    if out.panics.is_empty() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    out
}

fn check(out: &Outcome, secs: f64) {
    eprintln!(
        "fuzz: {} cases in {secs:.1} s, {} loaded, {} errors, {} of them panics caught by the \
         library, {} panicked",
        out.cases,
        out.loaded,
        out.cases - out.loaded - out.panics.len(),
        out.caught_inside,
        out.panics.len()
    );
    assert!(
        out.panics.is_empty(),
        "{} of {} cases panicked; the first: {}",
        out.panics.len(),
        out.cases,
        out.panics[0]
    );
}

#[test]
fn fuzz_files() {
    let t = std::time::Instant::now();
    let out = run_cases(1200, 20_240_601);
    check(&out, t.elapsed().as_secs_f64());
}

#[test]
#[ignore = "long run: DAPS_FUZZ_CASES (default 20000), DAPS_FUZZ_SEED"]
fn fuzz_files_long() {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let t = std::time::Instant::now();
    let out = run_cases(
        env("DAPS_FUZZ_CASES", 20_000) as usize,
        env("DAPS_FUZZ_SEED", 7),
    );
    check(&out, t.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------------------------
// Bounds and warnings, one by one

fn measurement(task: &str, c: usize, sigma_y: f64) -> (PathBuf, Vec<u8>) {
    let dir = tmp_dir("fuzz-one", &format!("{task}-{sigma_y}"));
    let spec = TaskSpec::defaults(task, 16, 16, &TaskFiles::default()).unwrap();
    let t = Task::build(spec, [c, 16, 16]).unwrap();
    let x = (common::randn(&[1, c, 16, 16], 3) * 0.5).unwrap();
    let p = dir.join("m.safetensors");
    MeasurementFile::simulate(t, &x, sigma_y, 1)
        .unwrap()
        .save(&p)
        .unwrap();
    let b = std::fs::read(&p).unwrap();
    (p, b)
}

fn set_meta(bytes: &[u8], key: &str, value: &str) -> Vec<u8> {
    let mut st = parse_st(bytes);
    st.header["__metadata__"][key] = json!(value);
    write_st(&st)
}

#[test]
fn huge_shapes_are_errors_before_allocation() {
    let (p, b) = measurement("sr4", 3, 0.05);
    for shape in [
        "[1, 1000000, 1000000]",
        "[3, 8192, 8192]",
        "[1099511627776, 1, 1]",
        "[1, 1, 4294967296]",
    ] {
        std::fs::write(&p, set_meta(&b, "shape", shape)).unwrap();
        let e = MeasurementFile::load(&p).err().expect("an error");
        eprintln!("{shape}: {e}");
    }
    let (p, b) = measurement("phase-retrieval", 1, 0.05);
    std::fs::write(
        &p,
        set_meta(
            &b,
            "operator",
            r#"{"task":"phase-retrieval","oversample":1e12}"#,
        ),
    )
    .unwrap();
    let e = MeasurementFile::load(&p)
        .err()
        .expect("an error")
        .to_string();
    assert!(e.contains("exceed"), "{e}");
    // a tensor header claiming more than the file holds
    let mut st = parse_st(&b);
    st.header["y"]["shape"] = json!([1, 1u64 << 20, 1u64 << 20]);
    std::fs::write(&p, write_st(&st)).unwrap();
    let e = MeasurementFile::load(&p)
        .err()
        .expect("an error")
        .to_string();
    assert!(e.contains("data bytes"), "{e}");
}

#[test]
fn check_batch_bounds_the_samples() {
    use daps::task::{check_batch, max_pixels, MAX_BATCH_IMAGES};
    check_batch(8, [3, 256, 256]).unwrap();
    assert!(check_batch(0, [3, 256, 256]).is_err());
    let n = MAX_BATCH_IMAGES * max_pixels() / (3 * 256 * 256);
    check_batch(n, [3, 256, 256]).unwrap();
    assert!(check_batch(n + 1, [3, 256, 256]).is_err());
    assert!(check_batch(usize::MAX, [3, 256, 256]).is_err());
    assert!(check_batch(1, [3, 100_000, 100_000]).is_err());
    assert!(check_batch(1, [17, 16, 16]).is_err());
}

#[test]
fn suspicious_measurements_load_with_warnings() {
    // clean: no warnings
    let (p, b) = measurement("inpaint-box", 3, 0.05);
    assert!(MeasurementFile::load(&p).unwrap().warnings.is_empty());
    // y stored as f64 and the mask as u8: converted, with a warning each
    let st = parse_st(&b);
    std::fs::write(&p, reencode(&st, "y", "F64")).unwrap();
    let w = MeasurementFile::load(&p).unwrap().warnings;
    assert!(
        w.len() == 1 && w[0].contains("'y'") && w[0].contains("F64"),
        "{w:?}"
    );
    std::fs::write(&p, reencode(&st, "mask", "U8")).unwrap();
    let w = MeasurementFile::load(&p).unwrap().warnings;
    assert!(w.len() == 1 && w[0].contains("'mask'"), "{w:?}");
    // σ_y > 1
    std::fs::write(&p, set_meta(&b, "sigma_y", "2.5")).unwrap();
    let w = MeasurementFile::load(&p).unwrap().warnings;
    assert!(w.len() == 1 && w[0].contains("sigma_y"), "{w:?}");
    // an all-zero mask
    let mut st = parse_st(&b);
    let o = &st.header["mask"]["data_offsets"];
    let (s, e) = (
        o[0].as_u64().unwrap() as usize,
        o[1].as_u64().unwrap() as usize,
    );
    st.data[s..e].fill(0);
    std::fs::write(&p, write_st(&st)).unwrap();
    let w = MeasurementFile::load(&p).unwrap().warnings;
    assert!(w.len() == 1 && w[0].contains("observes nothing"), "{w:?}");
}

#[test]
fn exact_posterior_without_noise_and_rank_deficient_a_is_an_error() {
    use daps::exact::{Conditioner, Posterior};
    use daps::prior::{Covariance, GaussianMixture};
    use nalgebra::{DMatrix, DVector};
    let gmm = GaussianMixture::new(
        vec![1.0],
        vec![DVector::zeros(3)],
        vec![Covariance::Isotropic(1.0)],
        &Device::Cpu,
    )
    .unwrap();
    // two identical rows: A C Aᵀ is singular, and σ_y = 0 adds nothing
    let a = DMatrix::from_row_slice(2, 3, &[1.0, 0.0, 0.0, 1.0, 0.0, 0.0]);
    let e = Conditioner::new(&gmm, &a, 0.0, None)
        .err()
        .expect("an error");
    assert!(e.to_string().contains("positive definite"), "{e}");
    let e = Posterior::new(&gmm, &a, 0.0, DVector::zeros(2))
        .err()
        .expect("an error");
    assert!(e.to_string().contains("rank-deficient"), "{e}");
    assert!(Conditioner::new(&gmm, &a, 0.1, None).is_ok());
    // y of the wrong length
    assert!(Posterior::new(&gmm, &a, 0.1, DVector::zeros(3)).is_err());
}
