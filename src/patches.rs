//! Where the sparse autoencoder's training patches come from: random 8×8 patches cut from real images — the
//! Fashion-MNIST training images by default, or every PNG/JPEG file of a directory (`--images DIR`) — and
//! normalised as in the UFLDL exercise (see [`cohort_ml::sae::normalize_patches`]).
//!
//! Patches are drawn from `cohort::rng::Rng::new(seed)`: image first, then top-left corner, so a seed and a source
//! always give the same patches (and so the same model).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use cohort::data::loaders::{load_fashion_mnist, Split};
use cohort::rng::Rng;
use cohort_ml::sae::{normalize_patches, sample_patches};

/// Side of a patch: 8×8 = 64 visible units, as in UFLDL and qjam.
pub const PATCH: usize = 8;

/// The most patches cut at once: 10 million patches are 5.1 GB of `f64`.
pub const MAX_PATCHES: usize = 10_000_000;

/// The most hidden units the commands accept (4 096 × 64 weights per layer is already far past UFLDL's 25).
pub const MAX_HIDDEN: usize = 4096;

/// One grayscale image, pixels in `[0, 1]`, row-major.
#[derive(Debug, Clone)]
pub struct GrayImage {
    /// The file it came from.
    pub path: PathBuf,
    /// Height in pixels.
    pub rows: usize,
    /// Width in pixels.
    pub cols: usize,
    /// `rows × cols` pixels.
    pub pixels: Vec<f64>,
}

/// Cuts `n` normalised patches (`PATCH²` values each) from `images` (a directory of PNG/JPEG files) or, without
/// it, from the given split of Fashion-MNIST. Returns the patches and a description of their source.
pub fn sample(images: Option<&Path>, split: Split, n: usize, seed: u64) -> Result<(Vec<f64>, String)> {
    if n == 0 || n > MAX_PATCHES {
        bail!("--patches must be in 1..={MAX_PATCHES} (got {n})");
    }
    match images {
        None => {
            let data = load_fashion_mnist(split)?;
            let patches = sample_patches(data.values(), 28, 28, n, PATCH, seed)?;
            let name = if split == Split::Train { "training" } else { "test" };
            Ok((patches, format!("Fashion-MNIST {name} images ({})", data.rows())))
        }
        Some(dir) => {
            let images = load_dir(dir)?;
            let patches = cut(&images, n, seed)?;
            Ok((patches, format!("{} images from {}", images.len(), dir.display())))
        }
    }
}

/// Reads every `.png`, `.jpg` and `.jpeg` file of `dir` (not recursively, in name order) as grayscale. Fails,
/// naming the file, on an image that cannot be decoded or is smaller than a patch, and on a directory with none.
pub fn load_dir(dir: &Path) -> Result<Vec<GrayImage>> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("cannot read the --images directory {}", dir.display()))?;
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry.with_context(|| format!("cannot list {}", dir.display()))?.path();
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        if path.is_file() && matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg")) {
            paths.push(path);
        }
    }
    if paths.is_empty() {
        bail!("{} holds no PNG or JPEG files (*.png, *.jpg, *.jpeg); put some images there", dir.display());
    }
    paths.sort();
    paths.iter().map(|p| load_image(p)).collect()
}

/// Reads one PNG or JPEG file as grayscale pixels in `[0, 1]`.
pub fn load_image(path: &Path) -> Result<GrayImage> {
    let decoded = image::ImageReader::open(path)
        .with_context(|| format!("cannot open image {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("cannot read image {}", path.display()))?
        .decode()
        .with_context(|| format!("cannot decode image {} (is it a valid PNG or JPEG file?)", path.display()))?;
    let gray = decoded.to_luma8();
    let (cols, rows) = (gray.width() as usize, gray.height() as usize);
    if rows < PATCH || cols < PATCH {
        bail!("image {} is {cols}×{rows} pixels, smaller than an {PATCH}×{PATCH} patch", path.display());
    }
    let pixels = gray.as_raw().iter().map(|&p| f64::from(p) / 255.0).collect();
    Ok(GrayImage { path: path.to_path_buf(), rows, cols, pixels })
}

/// Cuts `n` random patches from `images` (each may have its own size) and normalises them.
pub fn cut(images: &[GrayImage], n: usize, seed: u64) -> Result<Vec<f64>> {
    if images.is_empty() {
        bail!("no images to cut patches from");
    }
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(n * PATCH * PATCH);
    for _ in 0..n {
        let img = &images[rng.below(images.len() as u64) as usize];
        let top = rng.below((img.rows - PATCH + 1) as u64) as usize;
        let left = rng.below((img.cols - PATCH + 1) as u64) as usize;
        for r in top..top + PATCH {
            let start = r * img.cols + left;
            out.extend_from_slice(&img.pixels[start..start + PATCH]);
        }
    }
    normalize_patches(&mut out, PATCH * PATCH)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_png(path: &Path, w: u32, h: u32) {
        let img = image::GrayImage::from_fn(w, h, |x, y| image::Luma([((x * 31 + y * 17) % 256) as u8]));
        img.save(path).unwrap();
    }

    #[test]
    fn images_of_different_sizes_give_normalised_patches() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("a.png"), 20, 12);
        write_png(&dir.path().join("b.PNG"), 8, 8);
        std::fs::write(dir.path().join("notes.txt"), "not an image").unwrap();
        let images = load_dir(dir.path()).unwrap();
        assert_eq!(images.len(), 2);
        assert_eq!((images[0].rows, images[0].cols), (12, 20));
        let p = cut(&images, 50, 1).unwrap();
        assert_eq!(p.len(), 50 * 64);
        assert!(p.iter().all(|v| (0.1..=0.9).contains(v)));
        assert_eq!(p, cut(&images, 50, 1).unwrap());
    }

    #[test]
    fn bad_directories_and_images_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = format!("{:#}", load_dir(dir.path()).unwrap_err());
        assert!(err.contains("no PNG or JPEG"), "{err}");
        write_png(&dir.path().join("small.png"), 7, 30);
        let err = format!("{:#}", load_dir(dir.path()).unwrap_err());
        assert!(err.contains("small.png") && err.contains("smaller than an 8×8"), "{err}");
        std::fs::remove_file(dir.path().join("small.png")).unwrap();
        std::fs::write(dir.path().join("broken.jpg"), b"\xff\xd8\xff garbage").unwrap();
        let err = format!("{:#}", load_dir(dir.path()).unwrap_err());
        assert!(err.contains("broken.jpg"), "{err}");
        let err = format!("{:#}", load_dir(&dir.path().join("missing")).unwrap_err());
        assert!(err.contains("missing"), "{err}");
    }
}
