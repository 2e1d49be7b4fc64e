//! Preprocessors that turn a photo into a ControlNet's control image.
//!
//! Canny is OpenCV's `cv2.Canny(rgb, 100, 200)` (aperture 3, L1 gradient), which the
//! canny ControlNets were trained on and diffusers' documents use, pixel for pixel
//! (the fixtures hold OpenCV's own output). Written here because the Rust crates'
//! Canny (imageproc's) blurs first and works on a grey image, which gives other edges.

use image::{DynamicImage, GrayImage, Luma, RgbImage};

use crate::depth::DepthEstimator;
use crate::error::EngineError;

/// How an image a request sends becomes a control image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preprocess {
    /// Used as sent (already a control image).
    None,
    /// OpenCV's Canny edges at thresholds 100 and 200 ([`canny`]).
    Canny,
    /// A depth model's map ([`crate::depth::DepthEstimator`]), near is white.
    Depth,
}

impl std::str::FromStr for Preprocess {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(Preprocess::None),
            "canny" => Ok(Preprocess::Canny),
            "depth" => Ok(Preprocess::Depth),
            other => Err(EngineError::invalid(
                "preprocess",
                format!("{other:?} is not accepted: canny, depth or none"),
            )),
        }
    }
}

impl Preprocess {
    pub fn name(self) -> &'static str {
        match self {
            Preprocess::None => "none",
            Preprocess::Canny => "canny",
            Preprocess::Depth => "depth",
        }
    }

    /// The control image made from `img`; `depth` makes depth maps (absent: a request for
    /// one is refused).
    pub fn apply(
        self,
        img: DynamicImage,
        depth: Option<&DepthEstimator>,
    ) -> anyhow::Result<DynamicImage> {
        Ok(match self {
            Preprocess::None => img,
            Preprocess::Canny => {
                DynamicImage::ImageRgb8(to_rgb(&canny(&img.to_rgb8(), 100.0, 200.0)))
            }
            Preprocess::Depth => {
                let Some(model) = depth else {
                    return Err(EngineError::invalid(
                        "preprocess",
                        "depth needs a depth model, and none is configured (the catalog's \
                         depth_estimator); send a depth map with preprocess none, or use canny",
                    ));
                };
                DynamicImage::ImageRgb8(to_rgb(&model.depth_image(&img.to_rgb8())?))
            }
        })
    }
}

/// OpenCV's Canny edges of `img`: 255 on edges, 0 elsewhere. Per pixel the Sobel
/// gradient of the channel with the largest `|dx| + |dy|` (OpenCV's rule for colour
/// images, borders replicated), non-maximum suppression along its direction (quantised
/// with OpenCV's tan(22.5°) fixed-point test), then hysteresis: pixels above `high`
/// and the 8-connected ones above `low`.
pub fn canny(img: &RgbImage, low: f32, high: f32) -> GrayImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (low, high) = (low.floor() as i32, high.floor() as i32);
    if w == 0 || h == 0 {
        return GrayImage::new(img.width(), img.height());
    }
    let px = |x: isize, y: isize, c: usize| -> i32 {
        let x = x.clamp(0, w as isize - 1) as u32;
        let y = y.clamp(0, h as isize - 1) as u32;
        i32::from(img.get_pixel(x, y)[c])
    };
    // Sobel (3x3) per channel; keep the channel with the largest L1 magnitude.
    let mut dx = vec![0i32; w * h];
    let mut dy = vec![0i32; w * h];
    let mut mag = vec![0i32; w * h];
    for y in 0..h as isize {
        for x in 0..w as isize {
            let i = y as usize * w + x as usize;
            for c in 0..3 {
                let gx = px(x + 1, y - 1, c) + 2 * px(x + 1, y, c) + px(x + 1, y + 1, c)
                    - px(x - 1, y - 1, c)
                    - 2 * px(x - 1, y, c)
                    - px(x - 1, y + 1, c);
                let gy = px(x - 1, y + 1, c) + 2 * px(x, y + 1, c) + px(x + 1, y + 1, c)
                    - px(x - 1, y - 1, c)
                    - 2 * px(x, y - 1, c)
                    - px(x + 1, y - 1, c);
                let m = gx.abs() + gy.abs();
                if c == 0 || m > mag[i] {
                    (dx[i], dy[i], mag[i]) = (gx, gy, m);
                }
            }
        }
    }
    // Magnitudes outside the image are 0.
    let at = |x: isize, y: isize| -> i32 {
        if x < 0 || y < 0 || x >= w as isize || y >= h as isize {
            0
        } else {
            mag[y as usize * w + x as usize]
        }
    };
    // tan(22.5°) in Q15, as OpenCV.
    const TG22: i64 = 13573;
    // 0: not an edge, 1: weak candidate, 2: edge.
    let mut map = vec![0u8; w * h];
    let mut stack = Vec::new();
    for y in 0..h as isize {
        for x in 0..w as isize {
            let i = y as usize * w + x as usize;
            let m = mag[i];
            if m <= low {
                continue;
            }
            let (ax, ay) = (i64::from(dx[i].abs()), i64::from(dy[i].abs()) << 15);
            let tg22x = ax * TG22;
            let is_max = if ay < tg22x {
                m > at(x - 1, y) && m >= at(x + 1, y)
            } else if ay > tg22x + (ax << 16) {
                m > at(x, y - 1) && m >= at(x, y + 1)
            } else {
                let s = if (dx[i] ^ dy[i]) < 0 { -1 } else { 1 };
                m > at(x - s, y - 1) && m > at(x + s, y + 1)
            };
            if !is_max {
                continue;
            }
            if m > high {
                map[i] = 2;
                stack.push(i);
            } else {
                map[i] = 1;
            }
        }
    }
    // Hysteresis: weak candidates 8-connected to an edge become edges.
    while let Some(i) = stack.pop() {
        let (x, y) = ((i % w) as isize, (i / w) as isize);
        for (ox, oy) in [
            (-1, -1),
            (0, -1),
            (1, -1),
            (-1, 0),
            (1, 0),
            (-1, 1),
            (0, 1),
            (1, 1),
        ] {
            let (nx, ny) = (x + ox, y + oy);
            if nx < 0 || ny < 0 || nx >= w as isize || ny >= h as isize {
                continue;
            }
            let j = ny as usize * w + nx as usize;
            if map[j] == 1 {
                map[j] = 2;
                stack.push(j);
            }
        }
    }
    GrayImage::from_fn(img.width(), img.height(), |x, y| {
        Luma([if map[y as usize * w + x as usize] == 2 {
            255
        } else {
            0
        }])
    })
}

/// A preprocessor's grey output as a control image: three equal channels, as diffusers'
/// documents stack edges and depth maps.
pub fn to_rgb(edges: &GrayImage) -> RgbImage {
    RgbImage::from_fn(edges.width(), edges.height(), |x, y| {
        let v = edges.get_pixel(x, y)[0];
        image::Rgb([v, v, v])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_has_one_edge_line_and_flat_is_empty() {
        let flat = RgbImage::from_pixel(16, 16, image::Rgb([90, 90, 90]));
        assert!(canny(&flat, 100.0, 200.0).pixels().all(|p| p[0] == 0));
        let step = RgbImage::from_fn(16, 16, |x, _| {
            if x < 8 {
                image::Rgb([0, 0, 0])
            } else {
                image::Rgb([255, 255, 255])
            }
        });
        let edges = canny(&step, 100.0, 200.0);
        for y in 0..16 {
            let row: Vec<u32> = (0..16)
                .filter(|&x| edges.get_pixel(x, y)[0] == 255)
                .collect();
            assert_eq!(row.len(), 1, "row {y}: {row:?}");
        }
    }
}
