//! Files in and out: PNG/JPEG ↔ tensors, safetensors with string metadata, and atomic writes.
//!
//! Images are read as RGB or grayscale (alpha dropped) and mapped [0, 255] → [−1, 1], f32
//! `[1, C, H, W]`. Complex (MRI) images are `[1, 2, H, W]` (real, imaginary); a PNG becomes
//! (v, 0) with v its luminance (0.299 R + 0.587 G + 0.114 B for RGB) mapped to [0, 1].
//!
//! Safetensors files are read with their header checked first ([`check_safetensors_header`]:
//! header length within the file and 100 MB, each tensor's shape × dtype size equal to its
//! `data_offsets` span inside the file), so a corrupt file fails before anything is allocated.
//!
//! Every file the library writes goes through [`atomic_write`]: a temporary file in the same
//! folder, synced, then renamed over the target, so a failed write leaves the old file intact.

use crate::error::{Error, Result};
use crate::metric::image::{to_unit, IMAGE_RANGE};
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// An [`Error::Io`] naming the path.
pub(crate) fn io_err(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// A temporary name beside `path` for an atomic write: `path` + `.PID.N.tmp`, unique to this
/// process and call, so that processes writing the same file at once (shards of one `daps eval`)
/// never share a temporary file.
pub fn tmp_path(path: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(
        ".{}.{}.tmp",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    path.with_file_name(name)
}

/// Writes `bytes` to `path` through a temporary file beside it ([`tmp_path`]; synced, then
/// renamed).
pub fn atomic_write(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let path = path.as_ref();
    let tmp = tmp_path(path);
    let mut f = std::fs::File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
    f.write_all(bytes).map_err(|e| io_err(&tmp, e))?;
    f.sync_all().map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))
}

/// Runs `write(tmp)` to fill a temporary file beside `path` ([`tmp_path`]), syncs it, then
/// renames it over `path`.
pub fn atomic_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = tmp_path(path);
    write(&tmp)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))
}

/// Saves an image atomically, in the format its extension names (PNG or JPEG).
pub fn save_image(img: &image::DynamicImage, path: &Path) -> Result<()> {
    let format = image::ImageFormat::from_path(path)
        .map_err(|e| Error::msg(format!("cannot write {}: {e}", path.display())))?;
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, format)
        .map_err(|e| Error::msg(format!("cannot write {}: {e}", path.display())))?;
    atomic_write(path, buf.get_ref())
}

/// Reads a PNG/JPEG as `[1, C, H, W]` f32 in [−1, 1]: C = 1 for grayscale, else 3 (RGB).
pub fn read_image(path: &Path) -> Result<Tensor> {
    let img = image::open(path)
        .map_err(|e| Error::msg(format!("cannot read image {}: {e}", path.display())))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (c, raw) = if img.color().has_color() {
        (3, img.to_rgb8().into_raw())
    } else {
        (1, img.to_luma8().into_raw())
    };
    let hwc: Vec<f32> = raw.iter().map(|&v| v as f32 / 127.5 - 1.0).collect();
    let t = Tensor::from_vec(hwc, (h, w, c), &Device::Cpu)?;
    Ok(t.permute((2, 0, 1))?.unsqueeze(0)?.contiguous()?)
}

/// Reads a PNG/JPEG as the complex image `[1, 2, H, W]` (luminance in [0, 1], 0): see the module
/// docs.
pub fn read_complex_image(path: &Path) -> Result<Tensor> {
    let x = read_image(path)?;
    let (_, c, h, w) = x.dims4()?;
    let unit = to_unit(&x, IMAGE_RANGE)?;
    let v = if c == 3 {
        let [r, g, b] = [0, 1, 2].map(|i| unit.narrow(1, i, 1));
        ((r? * 0.299)? + (g? * 0.587)? + (b? * 0.114)?)?
    } else {
        unit
    };
    let im = Tensor::zeros((1, 1, h, w), DType::F32, &Device::Cpu)?;
    Ok(Tensor::cat(&[&v, &im], 1)?)
}

/// Reads the image a task takes: [`read_complex_image`] for complex tasks, else [`read_image`].
pub fn read_task_image(path: &Path, complex: bool) -> Result<Tensor> {
    if complex {
        read_complex_image(path)
    } else {
        read_image(path)
    }
}

/// `[N, 2, H, W]` complex images → their magnitude `[N, 1, H, W]`.
pub fn magnitude(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if c != 2 {
        return Err(Error::config(format!(
            "a complex image has 2 channels (real, imaginary), got {c}"
        )));
    }
    Ok(x.sqr()?.sum_keepdim(1)?.sqrt()?.reshape((n, 1, h, w))?)
}

/// Viewable [0, 1] images of samples `[N, C, H, W]` whose data range is `range`: the clipped
/// magnitude for complex tasks (range (0, hi) of the magnitude), else `range` → [0, 1].
pub fn display(x: &Tensor, complex: bool, range: (f64, f64)) -> Result<Tensor> {
    if complex {
        to_unit(&magnitude(x)?, (0.0, range.1.abs().max(range.0.abs())))
    } else {
        to_unit(x, range)
    }
}

/// Writes `[C, H, W]` or `[1, C, H, W]` values in [0, 1] (clipped) as an 8-bit PNG/JPEG.
pub fn write_unit_image(x: &Tensor, path: &Path) -> Result<()> {
    let x = if x.rank() == 4 {
        x.squeeze(0)?
    } else {
        x.clone()
    };
    let (c, h, w) = x.dims3()?;
    let v: Vec<u8> = x
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .permute((1, 2, 0))?
        .flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8)
        .collect();
    let (w, h) = (w as u32, h as u32);
    let img = match c {
        1 => image::GrayImage::from_raw(w, h, v).map(image::DynamicImage::ImageLuma8),
        3 => image::RgbImage::from_raw(w, h, v).map(image::DynamicImage::ImageRgb8),
        _ => {
            return Err(Error::config(format!(
                "cannot write a {c}-channel image to {}",
                path.display()
            )))
        }
    };
    // Invariant: the buffer holds exactly h·w·c bytes.
    save_image(&img.expect("buffer size matches"), path)
}

/// Writes an image whose values span `range` (clipped to it).
pub fn write_image(x: &Tensor, range: (f64, f64), path: &Path) -> Result<()> {
    write_unit_image(&to_unit(x, range)?, path)
}

/// ln(|y| + 10⁻³) of Fourier magnitudes `[N, C, H, W]`, scaled to [0, 1] per image and channel.
pub fn log_magnitude_view(y: &Tensor) -> Result<Tensor> {
    let (n, c, hh, ww) = y.dims4()?;
    let l = (y.abs()? + 1e-3)?.log()?.reshape((n * c, hh * ww))?;
    let (lo, hi) = (l.min_keepdim(1)?, l.max_keepdim(1)?);
    let span = (&hi - &lo)?.clamp(1e-12, f64::MAX)?;
    Ok(l.broadcast_sub(&lo)?
        .broadcast_div(&span)?
        .reshape((n, c, hh, ww))?)
}

/// Writes f32 tensors and string metadata as a safetensors file.
pub fn write_safetensors(
    path: impl AsRef<Path>,
    tensors: &[(&str, Tensor)],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".into(),
        // Invariant: a map of strings always serialises.
        serde_json::to_value(metadata).expect("strings"),
    );
    let mut data: Vec<u8> = Vec::new();
    for (name, t) in tensors {
        let v = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let start = data.len();
        data.extend(v.iter().flat_map(|x| x.to_le_bytes()));
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": "F32", "shape": t.dims(), "data_offsets": [start, data.len()]}),
        );
    }
    // Invariant: a JSON value always serialises.
    let mut json = serde_json::to_string(&header).expect("json");
    while !json.len().is_multiple_of(8) {
        json.push(' ');
    }
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(json.as_bytes());
    bytes.extend_from_slice(&data);
    atomic_write(path, &bytes)
}

/// Bytes per element of a safetensors dtype (`None`: unknown).
fn safetensors_dtype_size(dtype: &str) -> Option<usize> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" | "F8_E8M0" => 1,
        "U16" | "I16" | "F16" | "BF16" => 2,
        "U32" | "I32" | "F32" => 4,
        "U64" | "I64" | "F64" => 8,
        _ => return None,
    })
}

/// The largest safetensors header read (as the safetensors crate): 100 MB.
pub const MAX_SAFETENSORS_HEADER: usize = 100_000_000;

/// Parses and checks a safetensors file's header before any tensor is read: its length fits the
/// file (and [`MAX_SAFETENSORS_HEADER`]), it is a JSON object, and each tensor's shape × dtype
/// size equals its `data_offsets` span, which lies inside the data. Returns the header.
pub fn check_safetensors_header(
    bytes: &[u8],
) -> std::result::Result<serde_json::Map<String, serde_json::Value>, String> {
    let n = bytes
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_le_bytes)
        .ok_or("too short")?;
    let data_len = (bytes.len() - 8) as u64;
    if n > data_len || n > MAX_SAFETENSORS_HEADER as u64 {
        return Err(format!(
            "header length {n} exceeds the file ({} bytes)",
            bytes.len()
        ));
    }
    let n = n as usize;
    let header: serde_json::Value =
        serde_json::from_slice(&bytes[8..8 + n]).map_err(|e| e.to_string())?;
    let serde_json::Value::Object(header) = header else {
        return Err("the header is not a JSON object".into());
    };
    let data_len = bytes.len() - 8 - n;
    for (name, info) in &header {
        if name == "__metadata__" {
            continue;
        }
        let bad = |m: &str| Err(format!("tensor '{name}': {m}"));
        let dtype = info.get("dtype").and_then(|d| d.as_str());
        let Some(size) = dtype.and_then(safetensors_dtype_size) else {
            return bad(&format!("unknown dtype {:?}", info.get("dtype")));
        };
        let dims: Option<Vec<usize>> = info.get("shape").and_then(|s| s.as_array()).and_then(|a| {
            a.iter()
                .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                .collect()
        });
        let Some(dims) = dims else {
            return bad("shape is not a list of non-negative integers");
        };
        let offsets: Option<Vec<usize>> = info
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .filter(|a| a.len() == 2)
            .and_then(|a| {
                a.iter()
                    .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                    .collect()
            });
        let Some([start, end]) = offsets.and_then(|o| <[usize; 2]>::try_from(o).ok()) else {
            return bad("data_offsets is not a pair of non-negative integers");
        };
        let nbytes = dims
            .iter()
            .try_fold(size, |a, &d| a.checked_mul(d))
            .filter(|&b| b <= data_len);
        let Some(nbytes) = nbytes else {
            return bad(&format!(
                "shape {dims:?} of {} needs more than the file's {data_len} data bytes",
                dtype.unwrap_or_default()
            ));
        };
        if start > end || end > data_len || end - start != nbytes {
            return bad(&format!(
                "data_offsets [{start}, {end}] do not hold the {nbytes} bytes of shape {dims:?} \
                 (data: {data_len} bytes)"
            ));
        }
    }
    Ok(header)
}

/// Reads a safetensors file: its tensors (on the CPU) and its string metadata. The header is
/// checked first ([`check_safetensors_header`]), so corrupt sizes fail before allocating.
pub fn read_safetensors(
    path: impl AsRef<Path>,
) -> Result<(HashMap<String, Tensor>, BTreeMap<String, String>)> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.display().to_string(),
        source,
    })?;
    let bad = |m: String| {
        Error::msg(format!(
            "{}: not a readable safetensors file: {m}",
            path.display()
        ))
    };
    let header = check_safetensors_header(&bytes).map_err(bad)?;
    let meta = match header.get("__metadata__") {
        Some(m) => serde_json::from_value(m.clone()).map_err(|e| bad(e.to_string()))?,
        None => BTreeMap::new(),
    };
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| bad(e.to_string()))?;
    Ok((tensors, meta))
}
