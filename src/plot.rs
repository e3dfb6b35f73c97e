//! PNG line plots (plotters with a bundled DejaVu font, so no system fonts are needed), written
//! atomically.
//!
//! # Example
//!
//! ```
//! use s4::plot::{write_png, Panel, Series};
//!
//! let path = std::env::temp_dir().join(format!("s4-doc-plot-{}.png", std::process::id()));
//! let sine = Series {
//!     label: "sin t".into(),
//!     points: (0..50).map(|i| i as f64 * 0.1).map(|t| (t, t.sin())).collect(),
//! };
//! let panel = Panel { title: "one panel".into(), x_label: "t".into(), y_label: "u(t)".into(), series: vec![sine] };
//! write_png(&path, &[panel.clone(), panel], 320, 160)?; // two stacked panels: 320 × 320 pixels
//! let bytes = std::fs::read(&path).unwrap();
//! assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
//! assert_eq!(u32::from_be_bytes(bytes[16..20].try_into().unwrap()), 320); // IHDR width
//! assert_eq!(u32::from_be_bytes(bytes[20..24].try_into().unwrap()), 320); // IHDR height
//! # std::fs::remove_file(&path).unwrap();
//!
//! // nothing to draw is an error, and no file is written
//! assert!(write_png(&path, &[], 320, 160).is_err());
//! assert!(!path.exists());
//! # Ok::<(), s4::Error>(())
//! ```

use crate::error::{Error, Result};
use crate::io::write_atomic;
use plotters::prelude::*;
use std::path::Path;
use std::sync::Once;

/// One line of a plot.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// Points (x, y).
    pub points: Vec<(f64, f64)>,
}

/// One panel of a figure (its own axes, scaled to its finite points); a figure is a stack of
/// panels that share nothing but the image.
#[derive(Clone, Debug)]
pub struct Panel {
    /// Panel title.
    pub title: String,
    /// X axis label.
    pub x_label: String,
    /// Y axis label.
    pub y_label: String,
    /// Lines.
    pub series: Vec<Series>,
}

static FONT: Once = Once::new();

fn register_font() {
    FONT.call_once(|| {
        // the bundled font is valid TrueType; a failure here would only lose text
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

const COLORS: [RGBColor; 6] = [
    RGBColor(0, 0, 0),
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
];

/// Draws `panels` stacked vertically into a PNG of `width` × (`panel_height` · panels) pixels,
/// atomically. Non-finite points are skipped when scaling the axes.
///
/// # Errors
/// An empty figure, a series without finite points, or a failure to write the file.
pub fn write_png(path: &Path, panels: &[Panel], width: u32, panel_height: u32) -> Result<()> {
    if panels.is_empty() {
        return Err(Error::invalid("plot", "no panels", "at least one panel"));
    }
    register_font();
    let height = panel_height * panels.len() as u32;
    let mut rgb = vec![0u8; width as usize * height as usize * 3];
    let draw = |rgb: &mut [u8]| -> std::result::Result<(), Box<dyn std::error::Error>> {
        let root = BitMapBackend::with_buffer(rgb, (width, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let areas = root.split_evenly((panels.len(), 1));
        for (panel, area) in panels.iter().zip(areas.iter()) {
            let pts = panel.series.iter().flat_map(|s| s.points.iter()).filter(|(x, y)| x.is_finite() && y.is_finite());
            let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
            for &(x, y) in pts {
                x0 = x0.min(x);
                x1 = x1.max(x);
                y0 = y0.min(y);
                y1 = y1.max(y);
            }
            if !(x0.is_finite() && y0.is_finite()) {
                return Err(format!("panel '{}' has no finite points", panel.title).into());
            }
            let pad = ((y1 - y0) * 0.05).max(1e-12);
            let x1 = if x1 > x0 { x1 } else { x0 + 1.0 };
            let mut chart = ChartBuilder::on(area)
                .caption(&panel.title, ("sans-serif", 20))
                .margin(10)
                .x_label_area_size(35)
                .y_label_area_size(55)
                .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))?;
            chart.configure_mesh().x_desc(panel.x_label.as_str()).y_desc(panel.y_label.as_str()).draw()?;
            for (i, s) in panel.series.iter().enumerate() {
                let color = COLORS[i % COLORS.len()];
                chart
                    .draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(2)))?
                    .label(s.label.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
            }
            chart.configure_series_labels().border_style(BLACK).background_style(WHITE.mix(0.85)).draw()?;
        }
        root.present()?;
        Ok(())
    };
    draw(&mut rgb).map_err(|e| Error::format(path, format!("could not draw the plot: {e}")))?;
    write_atomic(path, &encode_png(&rgb, width, height).map_err(|e| Error::format(path, format!("PNG encoding: {e}")))?)
}

/// An 8-bit RGB image (rows top to bottom, `width * height * 3` bytes) as PNG file bytes.
fn encode_png(rgb: &[u8], width: u32, height: u32) -> std::result::Result<Vec<u8>, png::EncodingError> {
    let mut bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut bytes, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(bytes)
}
