//! Per-key limits on what ModelsLab's jobs keep in the store (their images and
//! answers, for 24 hours), so that one key cannot fill the store for everybody. A
//! request is admitted, with room reserved for the most it can store, before
//! anything runs; when its job is done the reservation becomes what it stored.
//! The ledger is one key-value entry per key (`usage/<owner>`).

use serde::{Deserialize, Serialize};

use crate::api_error::{ApiError, human_bytes};

/// What one key may keep at a time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_images: u32,
}

/// One job's share: reserved while it runs, what it stored once done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub id: u64,
    pub expires: u64,
    pub bytes: u64,
    pub images: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub entries: Vec<Entry>,
}

pub fn key(owner: &str) -> String {
    format!("usage/{owner}")
}

/// The most a job can store: each PNG at worst about its raw pixels (RGB, a filter
/// byte a row, zlib's stored blocks), and in base64 a third more when the answer
/// carries them. A side the request leaves to the model counts as 1024, the
/// largest ModelsLab asks for.
pub fn worst_case_bytes(
    width: Option<u32>,
    height: Option<u32>,
    samples: u32,
    base64: bool,
) -> u64 {
    let (w, h) = (
        u64::from(width.unwrap_or(1024)),
        u64::from(height.unwrap_or(1024)),
    );
    let png = (w * 3 + 1) * h + h * w * 3 / 16_000 * 5 + 1024;
    let one = if base64 { png.div_ceil(3) * 4 } else { png };
    one * u64::from(samples)
}

impl Usage {
    fn totals(&self) -> (u64, u32) {
        self.entries
            .iter()
            .fold((0, 0), |(b, n), e| (b + e.bytes, n + e.images))
    }

    /// Reserves `bytes` and `images` for job `id` (kept until `expires`), or refuses
    /// with a 429 saying what the key holds and when room frees up.
    pub fn admit(&mut self, now: u64, entry: Entry, limits: Limits) -> Result<(), ApiError> {
        self.entries.retain(|e| e.expires > now);
        let (bytes, images) = self.totals();
        if bytes + entry.bytes > limits.max_bytes || images + entry.images > limits.max_images {
            let wait = self
                .entries
                .iter()
                .map(|e| e.expires.saturating_sub(now))
                .min()
                .unwrap_or(0);
            let mut err = ApiError::new(
                429,
                format!(
                    "this key keeps {} in {images} images of the {} and {} images it may keep \
                     (for 24 hours); this request may need {} for {} images. Room frees up in {wait} s",
                    human_bytes(bytes as usize),
                    human_bytes(limits.max_bytes as usize),
                    limits.max_images,
                    human_bytes(entry.bytes as usize),
                    entry.images,
                ),
            );
            err.retry_after = Some(wait.clamp(1, u64::from(u32::MAX)) as u32);
            return Err(err);
        }
        self.entries.retain(|e| e.id != entry.id);
        self.entries.push(entry);
        Ok(())
    }

    /// Job `id` is done: it keeps what it stored.
    pub fn settle(&mut self, id: u64, bytes: u64, images: u32) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.id == id) {
            (e.bytes, e.images) = (bytes, images);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_bytes: 10_000_000,
        max_images: 3,
    };

    fn entry(id: u64, expires: u64, bytes: u64, images: u32) -> Entry {
        Entry {
            id,
            expires,
            bytes,
            images,
        }
    }

    #[test]
    fn reservations_settle_and_expire() {
        let mut u = Usage::default();
        u.admit(0, entry(1, 100, 6_000_000, 2), LIMITS).unwrap();
        // The images cap.
        let e = u.admit(0, entry(2, 100, 1, 2), LIMITS).unwrap_err();
        assert_eq!((e.status, e.retry_after), (429, Some(100)));
        assert!(e.message.contains("2 images of the"), "{}", e.message);
        // The bytes cap, then room once the first job settles smaller.
        assert!(u.admit(0, entry(2, 100, 5_000_000, 1), LIMITS).is_err());
        u.settle(1, 2_000_000, 2);
        u.admit(0, entry(2, 150, 5_000_000, 1), LIMITS).unwrap();
        assert!(u.admit(10, entry(3, 200, 1, 1), LIMITS).is_err());
        // Expired entries free their room.
        u.admit(100, entry(3, 200, 1, 1), LIMITS).unwrap();
        assert_eq!(u.entries.len(), 2);
        let back: Usage = serde_json::from_str(&serde_json::to_string(&u).unwrap()).unwrap();
        assert_eq!(back, u);
    }

    #[test]
    fn worst_cases_cover_real_pngs() {
        let raw = 64 * 64 * 3;
        assert!(worst_case_bytes(Some(64), Some(64), 1, false) > raw);
        assert_eq!(
            worst_case_bytes(Some(64), Some(64), 2, false),
            2 * worst_case_bytes(Some(64), Some(64), 1, false)
        );
        assert!(worst_case_bytes(None, None, 1, true) > 4 * 1024 * 1024);
        // A PNG of noise, the least compressible picture, fits its reservation.
        let noise: Vec<u8> = (0..raw).map(|i| (i * 7919 % 251) as u8).collect();
        let mut png = Vec::new();
        use image::ImageEncoder as _;
        image::codecs::png::PngEncoder::new(&mut png)
            .write_image(&noise, 64, 64, image::ExtendedColorType::Rgb8)
            .unwrap();
        assert!((png.len() as u64) < worst_case_bytes(Some(64), Some(64), 1, false));
    }
}
