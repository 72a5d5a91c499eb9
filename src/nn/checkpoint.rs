//! Reading state dicts (`.safetensors`, PyTorch `.pt`/`.pth`/`.bin`/`.ckpt`) and checking them
//! against a model's parameter list.

use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// One `(name, shape)` per parameter, in construction (= PyTorch `state_dict`) order.
pub type ParamList = Vec<(String, Vec<usize>)>;

/// Loads every tensor of a checkpoint onto the CPU, in its stored dtype. PyTorch files may
/// nest the weights under `state_dict` or `model`; a DataParallel `module.` prefix is removed.
pub fn load_state_dict(path: impl AsRef<Path>) -> Result<HashMap<String, Tensor>> {
    let path = path.as_ref();
    let shown = path.display().to_string();
    if !path.is_file() {
        return Err(Error::Io {
            path: shown,
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "weights file not found"),
        });
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mut tensors: HashMap<String, Tensor> = match ext.as_str() {
        "safetensors" => candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| Error::msg(format!("cannot read safetensors file {shown}: {e}")))?,
        "pt" | "pth" | "bin" | "ckpt" => {
            let read = |key: Option<&str>| {
                read_pickle(path, key)
                    .map_err(|e| Error::msg(format!("cannot read PyTorch file {shown}: {e}")))
            };
            let mut all = read(None)?;
            for key in ["state_dict", "model"] {
                if !all.is_empty() {
                    break;
                }
                if let Ok(nested) = read(Some(key)) {
                    all = nested;
                }
            }
            all.into_iter().collect()
        }
        _ => {
            return Err(Error::Unsupported(format!(
                "weights file {shown}: unknown extension {ext:?} \
                 (expected .safetensors, .pt, .pth, .bin or .ckpt)"
            )))
        }
    };
    if tensors.is_empty() {
        return Err(Error::msg(format!("no tensors found in {shown}")));
    }
    if tensors.keys().all(|k| k.starts_with("module.")) {
        tensors = tensors
            .into_iter()
            .map(|(k, v)| (k["module.".len()..].to_string(), v))
            .collect();
    }
    Ok(tensors)
}

/// Runs candle's pickle reader, turning its panics on malformed files (it indexes the pickled
/// tuples without checking their lengths) into errors.
fn guarded<T>(f: impl FnOnce() -> candle_core::Result<T>) -> std::result::Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(p) => Err(format!(
            "malformed pickle ({})",
            p.downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "the reader panicked".into())
        )),
    }
}

/// [`candle_core::pickle::read_all_with_key`], with each tensor's size checked against the file
/// before it is read: PyTorch stores tensor data uncompressed in the zip, so a tensor whose
/// offset + shape × dtype size exceeds the file's length is corrupt (and reading it would
/// allocate that size first).
fn read_pickle(
    path: &Path,
    key: Option<&str>,
) -> std::result::Result<Vec<(String, Tensor)>, String> {
    use candle_core::pickle::PthTensors;
    let file_len = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    let pth = guarded(|| PthTensors::new(path, key))?;
    let mut names: Vec<&String> = pth.tensor_infos().keys().collect();
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let info = &pth.tensor_infos()[name];
        let nbytes = info
            .layout
            .dims()
            .iter()
            .try_fold(info.dtype.size_in_bytes(), |a, &d| a.checked_mul(d))
            .and_then(|n| n.checked_add(info.layout.start_offset()))
            .and_then(|n| u64::try_from(n).ok());
        if nbytes.is_none_or(|n| n > file_len) {
            return Err(format!(
                "tensor `{name}` ({:?} of {:?}) does not fit the file's {file_len} bytes",
                info.layout.dims(),
                info.dtype
            ));
        }
        if let Some(t) = guarded(|| pth.get(name))? {
            out.push((name.clone(), t));
        }
    }
    Ok(out)
}

/// Checks `tensors` against `expected` (first missing or mis-shaped tensor in parameter
/// order, then unexpected extras) and returns a `VarBuilder` over them in `dtype` on `device`.
pub(crate) fn var_builder(
    tensors: HashMap<String, Tensor>,
    expected: &ParamList,
    dtype: DType,
    device: &Device,
    source: &str,
) -> Result<VarBuilder<'static>> {
    for (name, shape) in expected {
        match tensors.get(name) {
            None => {
                return Err(Error::msg(format!(
                    "weights {source} do not fit the model: missing tensor `{name}` \
                     (expected shape {shape:?})"
                )))
            }
            Some(t) if t.dims() != shape.as_slice() => {
                return Err(Error::Shape {
                    what: format!("tensor `{name}` of weights {source}"),
                    expected: shape.clone(),
                    got: t.dims().to_vec(),
                })
            }
            _ => {}
        }
    }
    let names: HashSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    let mut extra: Vec<&String> = tensors
        .keys()
        .filter(|k| !names.contains(k.as_str()))
        .collect();
    if !extra.is_empty() {
        extra.sort();
        return Err(Error::msg(format!(
            "weights {source} do not fit the model: unexpected tensor `{}` ({} unexpected)",
            extra[0],
            extra.len()
        )));
    }
    let mut map = HashMap::with_capacity(tensors.len());
    for (k, t) in tensors {
        map.insert(k, t.to_dtype(dtype)?.to_device(device)?);
    }
    Ok(VarBuilder::from_tensors(map, dtype, device))
}

struct Recorder(Arc<Mutex<ParamList>>);

impl SimpleBackend for Recorder {
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        // Invariant: the lock is only taken here and in `record_params`, neither of which
        // panics while holding it, so it is never poisoned.
        self.0
            .lock()
            .unwrap()
            .push((name.to_string(), s.dims().to_vec()));
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }
    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("parameter recorder: `{name}` requested without a shape")
    }
    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// Runs a model constructor on a `VarBuilder` that only records the requested names and
/// shapes (no weights are allocated: every tensor is a broadcast scalar).
pub(crate) fn record_params<T>(
    build: impl FnOnce(VarBuilder<'static>) -> candle_core::Result<T>,
) -> Result<ParamList> {
    let list = Arc::new(Mutex::new(Vec::new()));
    let vb = VarBuilder::from_backend(Box::new(Recorder(list.clone())), DType::F32, Device::Cpu);
    build(vb)?;
    // Invariant: not poisoned (see `Recorder::get`).
    let out = list.lock().unwrap().clone();
    Ok(out)
}

/// Parses a `*_params.txt` listing (`name<TAB>[d0, d1, ...]` per line).
pub fn parse_param_list(text: &str) -> Result<ParamList> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (name, shape) = l
                .split_once('\t')
                .ok_or_else(|| Error::msg(format!("bad parameter line {l:?}")))?;
            let shape: Vec<usize> = serde_json::from_str(shape.trim())
                .map_err(|e| Error::msg(format!("bad shape in {l:?}: {e}")))?;
            Ok((name.to_string(), shape))
        })
        .collect()
}

/// Total number of scalars in a parameter list.
pub fn num_params(list: &ParamList) -> usize {
    list.iter().map(|(_, s)| s.iter().product::<usize>()).sum()
}
