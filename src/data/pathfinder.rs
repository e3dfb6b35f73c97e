//! Pathfinder (Linsley et al. 2018, "Learning long-range spatial dependencies with horizontal gated
//! recurrent units"; LRA's `pathfinder32`): are the two markers on the same path?
//!
//! # The generator
//!
//! Each image is `size × size` (default 32) grayscale in [0, 1], flattened row-major to a sequence
//! of L = size² values (`d_input = 1`). It always holds the same objects, whatever the label:
//!
//! - two *main* paths of `path_len` pixels and `n_distractors` distractor paths of
//!   `distractor_len` pixels. A path is a chain of 8-connected pixels traced by a walker whose
//!   heading turns by at most `max_turn` radians per unit step (bounded curvature); it is drawn
//!   dashed, `dash` pixels on and `gap` pixels off along the chain (its two end pixels always on),
//!   with value `path_value`;
//! - two markers, squares of side `2 marker_radius + 1` with value `marker_value`, centred on path
//!   ends.
//!
//! Label 1: the markers sit on the two ends of main path 0. Label 0: one on an end of main path 0,
//! one on an end of main path 1. The geometry (all paths, and which end of path 0 and of path 1
//! would carry markers) is drawn *before* and independently of the label, so paths, brightness and
//! marker count have the same distribution in both classes. Further, a geometry is kept only if
//! the two candidate marker distances (path 0's ends; path 0's end to path 1's end) differ by at
//! most `distance_tolerance` pixels, so the marker distance is no shortcut either.
//!
//! Separation is enforced by rejection: every pixel of a path (gaps included) and of the marker
//! squares reserved at both its ends is more than `gap + 1` pixels (Chebyshev) from every pixel of
//! any other path. Hence, with `reach = gap + 1`, the foreground pixels connected to a marker
//! through steps of Chebyshev length ≤ reach are exactly its own path: a flood fill from one marker
//! reaches the other iff the label is 1. The paths do not touch each other or themselves (a chain
//! never revisits a pixel), and each path's two ends are more than `2 marker_radius + reach` apart.
//! Each split has ⌈n/2⌉ or ⌊n/2⌋ positives, in seeded random order.
//!
//! Known difference from the original: Linsley's paths are made of anti-aliased oriented "paddles"
//! with fixed spacing, the markers are discs, and the contrast is randomized; here everything is
//! on the pixel grid, which is what makes the flood-fill guarantee exact.
//!
//! # The LRA release
//!
//! [`load_lra_dir`] reads the released PNGs (see its docs for the layout).
//!
//! # Example
//!
//! The label is exactly "a flood fill with steps of Chebyshev length ≤ `gap + 1` from one marker
//! reaches the other":
//!
//! ```
//! use s4::data::pathfinder::{generate, Config};
//! use s4::data::{Inputs, SplitSizes};
//!
//! /// Whether every marker pixel is reachable from the first one through foreground pixels.
//! fn markers_connected(img: &[f32], size: usize, reach: usize, marker: f32) -> bool {
//!     let start = img.iter().position(|&v| v == marker).unwrap();
//!     let (mut seen, mut stack, mut reached) = (vec![false; img.len()], vec![start], 0);
//!     seen[start] = true;
//!     while let Some(p) = stack.pop() {
//!         reached += usize::from(img[p] == marker);
//!         let (r, c) = (p / size, p % size);
//!         for rr in r.saturating_sub(reach)..=(r + reach).min(size - 1) {
//!             for cc in c.saturating_sub(reach)..=(c + reach).min(size - 1) {
//!                 let q = rr * size + cc;
//!                 if img[q] > 0.0 && !seen[q] {
//!                     seen[q] = true;
//!                     stack.push(q);
//!                 }
//!             }
//!         }
//!     }
//!     reached == img.iter().filter(|&&v| v == marker).count()
//! }
//!
//! let cfg = Config::default(); // 32 × 32
//! let task = generate(&cfg, &SplitSizes::new(8, 2, 2), 0)?;
//! let Inputs::Features { d_input: 1, len: 1024, data } = &task.train.inputs else { unreachable!() };
//! let labels = task.train.targets.classes().unwrap();
//! assert_eq!(labels.iter().filter(|&&l| l == 1).count(), 4); // balanced
//! for (img, &label) in data.iter().zip(labels) {
//!     // two 3 × 3 markers whatever the label
//!     assert_eq!(img.iter().filter(|&&v| v == cfg.marker_value).count(), 18);
//!     assert_eq!(markers_connected(img, cfg.size, cfg.gap + 1, cfg.marker_value), label == 1);
//! }
//! assert!(generate(&Config { size: 4, ..cfg }, &SplitSizes::new(1, 1, 1), 0).is_err());
//! # Ok::<(), s4::Error>(())
//! ```

use std::f64::consts::TAU;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::{Rng, RngExt, SeedableRng};
use rand_pcg::Pcg64;
use serde::{Deserialize, Serialize};

use super::{permutation, Inputs, Split, SplitSizes, Targets, TaskData};
use crate::error::{Error, Result};

/// Generator settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Image side (L = size²).
    pub size: usize,
    /// Pixels of each of the two main paths.
    pub path_len: usize,
    /// Number of distractor paths.
    pub n_distractors: usize,
    /// Pixels of each distractor path.
    pub distractor_len: usize,
    /// Pixels drawn per dash.
    pub dash: usize,
    /// Pixels skipped between dashes (connectivity reach is `gap + 1`).
    pub gap: usize,
    /// Largest heading change per unit step, in radians (bounded curvature).
    pub max_turn: f64,
    /// Marker squares have side `2 marker_radius + 1`.
    pub marker_radius: usize,
    /// Value of path pixels, in (0, 1].
    pub path_value: f32,
    /// Value of marker pixels, in (0, 1], different from `path_value`.
    pub marker_value: f32,
    /// Largest difference (pixels) between the positive and the negative marker distance.
    pub distance_tolerance: f64,
}

impl Default for Config {
    /// 32×32, two main paths of 18 pixels, two distractors of 12, dashes 3 on 1 off, turns up to
    /// 0.35 rad per step, 3×3 markers.
    fn default() -> Self {
        Config {
            size: 32,
            path_len: 18,
            n_distractors: 2,
            distractor_len: 12,
            dash: 3,
            gap: 1,
            max_turn: 0.35,
            marker_radius: 1,
            path_value: 0.6,
            marker_value: 1.0,
            distance_tolerance: 3.0,
        }
    }
}

impl Config {
    /// Checks the ranges: 8 ≤ size ≤ 512, path lengths ≥ 2, dash ≥ 1, gap ≤ 8, 0 ≤ max_turn ≤ π,
    /// markers smaller than the image, values in (0, 1] and distinct, tolerance ≥ 0.
    ///
    /// # Errors
    /// The first field out of range, named.
    pub fn validate(&self) -> Result<()> {
        if !(8..=512).contains(&self.size) {
            return Err(Error::invalid("pathfinder size", self.size, "8..=512"));
        }
        if self.path_len < 2 {
            return Err(Error::invalid("pathfinder path_len", self.path_len, "at least 2"));
        }
        if self.n_distractors > 0 && self.distractor_len < 2 {
            return Err(Error::invalid("pathfinder distractor_len", self.distractor_len, "at least 2"));
        }
        if self.dash == 0 {
            return Err(Error::invalid("pathfinder dash", 0, "at least 1"));
        }
        if self.gap > 8 {
            return Err(Error::invalid("pathfinder gap", self.gap, "at most 8"));
        }
        if !(0.0..=std::f64::consts::PI).contains(&self.max_turn) {
            return Err(Error::invalid("pathfinder max_turn", self.max_turn, "in [0, pi] radians"));
        }
        if 2 * self.marker_radius + 1 >= self.size {
            return Err(Error::invalid(
                "pathfinder marker_radius",
                self.marker_radius,
                "markers smaller than the image",
            ));
        }
        for (name, v) in [("path_value", self.path_value), ("marker_value", self.marker_value)] {
            if !(v > 0.0 && v <= 1.0) {
                return Err(Error::invalid(format!("pathfinder {name}"), v, "in (0, 1]"));
            }
        }
        if self.path_value == self.marker_value {
            return Err(Error::invalid("pathfinder marker_value", self.marker_value, "different from path_value"));
        }
        if self.distance_tolerance.is_nan() || self.distance_tolerance < 0.0 {
            return Err(Error::invalid("pathfinder distance_tolerance", self.distance_tolerance, "a number >= 0"));
        }
        Ok(())
    }

    fn reach(&self) -> usize {
        self.gap + 1
    }
}

/// A traced path: its chain of pixels (row, col).
type Chain = Vec<(usize, usize)>;

/// Per-image state: the pixels within reach of already placed paths.
struct Canvas<'a> {
    cfg: &'a Config,
    forbidden: Vec<bool>,
}

impl Canvas<'_> {
    fn ok(&self, (r, c): (usize, usize)) -> bool {
        !self.forbidden[r * self.cfg.size + c]
    }

    /// Pixels of the marker square centred on `p`.
    fn square(&self, p: (usize, usize)) -> impl Iterator<Item = (usize, usize)> + use<> {
        let m = self.cfg.marker_radius;
        (p.0 - m..=p.0 + m).flat_map(move |r| (p.1 - m..=p.1 + m).map(move |c| (r, c)))
    }

    /// Traces a chain of `n` pixels clear of `forbidden`, with room for marker squares at both
    /// ends; `None` if the walker gets stuck.
    fn trace<R: Rng>(&self, n: usize, rng: &mut R) -> Option<Chain> {
        let (size, m) = (self.cfg.size, self.cfg.marker_radius);
        let (lo, hi) = (m, size - 1 - m);
        let start = (rng.random_range(lo..=hi), rng.random_range(lo..=hi));
        if !self.ok(start) {
            return None;
        }
        let mut chain = vec![start];
        let (mut y, mut x) = (start.0 as f64, start.1 as f64);
        let mut heading = rng.random_range(0.0..TAU);
        // A unit step moves each coordinate by at most 1, so the rounded pixel moves to an
        // 8-neighbour or stays; a stay is not counted.
        let mut steps = 0;
        while chain.len() < n {
            steps += 1;
            if steps > 4 * n {
                return None;
            }
            if self.cfg.max_turn > 0.0 {
                heading += rng.random_range(-self.cfg.max_turn..=self.cfg.max_turn);
            }
            y += heading.sin();
            x += heading.cos();
            if y < lo as f64 - 0.5 || x < lo as f64 - 0.5 || y >= hi as f64 + 0.5 || x >= hi as f64 + 0.5 {
                return None;
            }
            let p = ((y.round() as usize).clamp(lo, hi), (x.round() as usize).clamp(lo, hi));
            if p == *chain.last()? {
                continue;
            }
            if !self.ok(p) || chain.contains(&p) {
                return None;
            }
            chain.push(p);
        }
        let (a, b) = (chain[0], chain[n - 1]);
        let cheb = a.0.abs_diff(b.0).max(a.1.abs_diff(b.1));
        if cheb <= 2 * m + self.cfg.reach() {
            return None;
        }
        if !self.square(a).chain(self.square(b)).all(|p| self.ok(p)) {
            return None;
        }
        Some(chain)
    }

    /// Marks everything within reach of the chain and its end squares as forbidden.
    fn place(&mut self, chain: &Chain) {
        let (size, reach) = (self.cfg.size as isize, self.cfg.reach() as isize);
        let ends = [chain[0], chain[chain.len() - 1]];
        let pixels: Vec<(usize, usize)> =
            chain.iter().copied().chain(ends.iter().flat_map(|&e| self.square(e).collect::<Vec<_>>())).collect();
        for (r, c) in pixels {
            for dr in -reach..=reach {
                for dc in -reach..=reach {
                    let (rr, cc) = (r as isize + dr, c as isize + dc);
                    if (0..size).contains(&rr) && (0..size).contains(&cc) {
                        self.forbidden[(rr * size + cc) as usize] = true;
                    }
                }
            }
        }
    }
}

fn dist(a: (usize, usize), b: (usize, usize)) -> f64 {
    let (dy, dx) = (a.0 as f64 - b.0 as f64, a.1 as f64 - b.1 as f64);
    (dy * dy + dx * dx).sqrt()
}

/// Draws one image with the given label (see the module docs).
fn render<R: Rng>(cfg: &Config, label: bool, rng: &mut R) -> Result<Vec<f32>> {
    const MAX_IMAGE_TRIES: usize = 10_000;
    const MAX_PATH_TRIES: usize = 200;
    let lens: Vec<usize> = [cfg.path_len, cfg.path_len]
        .into_iter()
        .chain(std::iter::repeat_n(cfg.distractor_len, cfg.n_distractors))
        .collect();
    'image: for _ in 0..MAX_IMAGE_TRIES {
        let mut canvas = Canvas { cfg, forbidden: vec![false; cfg.size * cfg.size] };
        let mut chains: Vec<Chain> = Vec::with_capacity(lens.len());
        for &n in &lens {
            let Some(chain) = (0..MAX_PATH_TRIES).find_map(|_| canvas.trace(n, rng)) else { continue 'image };
            canvas.place(&chain);
            chains.push(chain);
        }
        let end = |chain: &Chain, last: bool| if last { chain[chain.len() - 1] } else { chain[0] };
        let (a_last, b_last) = (rng.random::<bool>(), rng.random::<bool>());
        let a = end(&chains[0], a_last);
        let positive_b = end(&chains[0], !a_last);
        let negative_b = end(&chains[1], b_last);
        if (dist(a, positive_b) - dist(a, negative_b)).abs() > cfg.distance_tolerance {
            continue;
        }
        let b = if label { positive_b } else { negative_b };

        let mut img = vec![0f32; cfg.size * cfg.size];
        let period = cfg.dash + cfg.gap;
        for chain in &chains {
            for (i, &(r, c)) in chain.iter().enumerate() {
                if i % period < cfg.dash || i == chain.len() - 1 {
                    img[r * cfg.size + c] = cfg.path_value;
                }
            }
        }
        for p in [a, b] {
            for (r, c) in canvas.square(p) {
                img[r * cfg.size + c] = cfg.marker_value;
            }
        }
        return Ok(img);
    }
    Err(Error::invalid(
        "pathfinder config",
        format!("{cfg:?}"),
        format!("paths that fit the image ({MAX_IMAGE_TRIES} attempts failed); use fewer or shorter paths"),
    ))
}

/// Generates a Pathfinder task (see the module docs): images of L = size² values in [0, 1],
/// 2 classes, each split with ⌈n/2⌉ or ⌊n/2⌋ positives. Deterministic in `seed`.
///
/// # Errors
/// An invalid [`Config`], or one whose paths do not fit the image (10 000 attempts failed).
pub fn generate(cfg: &Config, sizes: &SplitSizes, seed: u64) -> Result<TaskData> {
    cfg.validate()?;
    sizes.check_memory::<f32>("pathfinder", cfg.size * cfg.size)?;
    let mut rng = Pcg64::seed_from_u64(seed);
    let mut split = |n: usize| -> Result<Split> {
        let mut labels: Vec<u32> = (0..n as u32).map(|i| i % 2).collect();
        labels.shuffle(&mut rng);
        let data = labels.iter().map(|&l| render(cfg, l == 1, &mut rng)).collect::<Result<Vec<_>>>()?;
        Ok(Split {
            inputs: Inputs::Features { d_input: 1, len: cfg.size * cfg.size, data },
            targets: Targets::Classes(labels),
        })
    };
    let train = split(sizes.train)?;
    let val = split(sizes.val)?;
    let test = split(sizes.test)?;
    Ok(task("pathfinder", train, val, test))
}

fn task(name: &str, train: Split, val: Split, test: Split) -> TaskData {
    TaskData { name: name.into(), train, val, test, vocab_size: None, d_input: 1, d_output: 2, regression: false }
}

/// The three difficulty folders of the LRA release.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Difficulty {
    /// `curv_baseline` (contours of 6 paddles).
    Easy,
    /// `curv_contour_length_9`.
    Intermediate,
    /// `curv_contour_length_14`: the one LRA reports and the official S4 loader reads.
    Hard,
}

impl Difficulty {
    /// The folder name in the release.
    pub fn dir_name(self) -> &'static str {
        match self {
            Difficulty::Easy => "curv_baseline",
            Difficulty::Intermediate => "curv_contour_length_9",
            Difficulty::Hard => "curv_contour_length_14",
        }
    }
}

/// Loads the LRA Pathfinder release at its hard difficulty with split seed 42: see [`load_lra`].
pub fn load_lra_dir(dir: &Path, resolution: usize) -> Result<TaskData> {
    load_lra(dir, resolution, Difficulty::Hard, 42)
}

/// Loads the LRA Pathfinder release (`lra_release.gz`, unpacked).
///
/// `dir` is the folder containing `pathfinder{resolution}/` (or that folder itself). Its
/// `<difficulty>/metadata/` holds text files named `0.npy`, `1.npy`, ... (plain text despite the
/// extension), one image per line, whitespace-separated: `imgs/<k> sample_<i>.png <index> <label>
/// ...`; the image is `<difficulty>/imgs/<k>/sample_<i>.png`, the label 0 or 1 (fields 0, 1 and 3,
/// as LRA's TFDS builder and the official S4 loader read them). Metadata files are read in numeric
/// order.
///
/// Images are decoded as 8-bit grayscale (colour is converted to luma, 0.299 R + 0.587 G +
/// 0.114 B, as PIL's `convert("L")`), must be `resolution × resolution`, and are scaled to [0, 1]
/// (the S4 loader further normalizes to [-1, 1]). Zero-byte image files are skipped (the release
/// has one, `pathfinder32/curv_baseline/imgs/0/sample_172.png`, which S4 blacklists); any other
/// unreadable image is an error. As in S4, a seeded random 10% is val, 10% test, the rest train.
///
/// # Errors
/// A missing folder or metadata, a malformed metadata line (file and line named), an image that
/// cannot be decoded or is not `resolution × resolution`, a label other than 0 or 1.
pub fn load_lra(dir: &Path, resolution: usize, difficulty: Difficulty, seed: u64) -> Result<TaskData> {
    if !(1..=4096).contains(&resolution) {
        return Err(Error::invalid("pathfinder resolution", resolution, "1..=4096 (LRA: 32, 64, 128 or 256)"));
    }
    let nested = dir.join(format!("pathfinder{resolution}"));
    let root = if nested.is_dir() { nested } else { dir.to_path_buf() };
    let base = root.join(difficulty.dir_name());
    let meta_dir = base.join("metadata");
    let entries = std::fs::read_dir(&meta_dir).map_err(|e| Error::io(&meta_dir, e))?;
    let mut metas: Vec<(u64, PathBuf)> = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(&meta_dir, e))?.path();
        if path.extension().is_some_and(|e| e == "npy") {
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let k = stem
                .parse::<u64>()
                .map_err(|_| Error::format(&path, "metadata file name is not a number (expected 0.npy, 1.npy, ...)"))?;
            metas.push((k, path));
        }
    }
    if metas.is_empty() {
        return Err(Error::format(&meta_dir, "no metadata *.npy files"));
    }
    metas.sort();

    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for (_, meta) in &metas {
        let text = super::read_text(meta)?;
        for (i, line) in text.lines().enumerate() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.is_empty() {
                continue;
            }
            if fields.len() < 4 {
                return Err(Error::format(
                    meta,
                    format!(
                        "line {}: expected at least 4 fields (subdir, file, index, label), got {}",
                        i + 1,
                        fields.len()
                    ),
                ));
            }
            let label = match fields[3] {
                "0" => 0,
                "1" => 1,
                other => return Err(Error::format(meta, format!("line {}: label {other:?} is not 0 or 1", i + 1))),
            };
            let img_path = base.join(fields[0]).join(fields[1]);
            let file_len = std::fs::metadata(&img_path).map_err(|e| Error::io(&img_path, e))?.len();
            if file_len == 0 {
                continue;
            }
            images.push(read_gray_png(&img_path, resolution)?);
            labels.push(label);
        }
    }
    let n = images.len();
    let all = Split {
        inputs: Inputs::Features { d_input: 1, len: resolution * resolution, data: images },
        targets: Targets::Classes(labels),
    };
    let perm = permutation(n, seed);
    let (n_val, n_test) = (n / 10, n / 10);
    let n_train = n - n_val - n_test;
    Ok(task(
        &format!("pathfinder{resolution}/{}", difficulty.dir_name()),
        all.select(&perm[..n_train]),
        all.select(&perm[n_train..n_train + n_val]),
        all.select(&perm[n_train + n_val..]),
    ))
}

/// Decodes a PNG to `resolution²` gray values in [0, 1], row-major.
fn read_gray_png(path: &Path, resolution: usize) -> Result<Vec<f32>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut decoder = png::Decoder::new(BufReader::new(file));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let bad = |e: png::DecodingError| Error::format(path, format!("not a readable PNG: {e}"));
    let mut reader = decoder.read_info().map_err(bad)?;
    let (w, h) = reader.info().size();
    if (w as usize, h as usize) != (resolution, resolution) {
        return Err(Error::format(path, format!("image is {w}x{h}, expected {resolution}x{resolution}")));
    }
    let mut buf = vec![0u8; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).map_err(bad)?;
    let channels = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => {
            return Err(Error::format(path, "indexed colour was not expanded"));
        }
    };
    let mut out = Vec::with_capacity(resolution * resolution);
    for row in 0..resolution {
        let line = &buf[row * info.line_size..];
        for col in 0..resolution {
            let px = &line[col * channels..];
            let gray = if channels >= 3 {
                (299 * px[0] as u32 + 587 * px[1] as u32 + 114 * px[2] as u32 + 500) / 1000
            } else {
                px[0] as u32
            };
            out.push(gray as f32 / 255.0);
        }
    }
    Ok(out)
}
