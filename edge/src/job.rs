//! The internal request every dialect maps to: the contract's generate-request,
//! plus where its input images come from (the shared core fetches and checks them,
//! then sends them beside the request). Also the field rules several dialects share.

use contract::GenerateRequest;
use url::Url;

use crate::api_error::ApiError;
use crate::fields::Fields;

/// One generation, as the inference server will see it, and its input images.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// `init_image` stays None here; the core sets it from `init` (and `mask`). The
    /// dialect fills `controlnets`, their images empty: they come from `controls`.
    pub request: GenerateRequest,
    pub init: Option<InitImageSource>,
    /// Inpainting's mask (with `init`).
    pub mask: Option<InputImage>,
    /// One control image per entry of `request.controlnets`, in order.
    pub controls: Vec<InputImage>,
    /// Set when the output size comes from the input image (width and height are
    /// then None until the core has decoded it).
    pub size_from_init: Option<SizeRule>,
    /// What the dialect wants back when it renders the answer (echoed fields,
    /// response options); the core only carries it.
    pub echo: serde_json::Value,
}

impl Job {
    pub fn new(request: GenerateRequest, init: Option<InitImageSource>) -> Job {
        Job {
            request,
            init,
            mask: None,
            controls: Vec::new(),
            size_from_init: None,
            echo: serde_json::Value::Null,
        }
    }
}

/// How an output size follows an input image's: the same aspect, the longer side at
/// most `max`, each side a multiple of `step` and at least `min`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SizeRule {
    pub step: u32,
    pub min: u32,
    pub max: u32,
}

impl SizeRule {
    /// For dialects without a rule of their own: multiples of 8 up to 1024.
    pub const DEFAULT: SizeRule = SizeRule {
        step: 8,
        min: 64,
        max: 1024,
    };

    pub fn size_for(self, (w, h): (u32, u32)) -> (u32, u32) {
        let scale = (f64::from(self.max) / f64::from(w.max(h).max(1))).min(1.0);
        let side = |v: u32| {
            let v = (f64::from(v) * scale / f64::from(self.step)).round() as u32 * self.step;
            v.clamp(self.min, self.max)
        };
        (side(w), side(h))
    }
}

/// The input image of an image-to-image job, before it is fetched and decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct InitImageSource {
    /// The request field it came in, for error messages ("inputImage").
    pub field: &'static str,
    pub source: ImageSource,
    pub strength: f32,
}

/// Another input image (a mask, a control image), before it is fetched.
#[derive(Debug, Clone, PartialEq)]
pub struct InputImage {
    /// The request field it came in, for error messages ("mask_image").
    pub field: &'static str,
    pub source: ImageSource,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ImageSource {
    Url(Url),
    /// Encoded image bytes the client sent itself (base64 or an upload).
    Bytes(Vec<u8>),
}

impl ImageSource {
    /// An image URL field: it must parse as an absolute URL; whether it may be
    /// fetched is decided later, against the image-host allowlist.
    pub fn url(field: &str, text: &str) -> Result<ImageSource, ApiError> {
        let text = text.trim();
        Url::parse(text)
            .map(ImageSource::Url)
            .map_err(|e| ApiError::field(field, format!("not an absolute http(s) URL ({e})")))
    }
}

/// Width x height from a "WxH" string such as "1024x1024".
pub fn parse_size(field: &str, text: &str) -> Result<(u32, u32), ApiError> {
    let bad = || {
        ApiError::field(
            field,
            format!("must be WIDTHxHEIGHT, e.g. \"1024x1024\" (got {text:?})"),
        )
    };
    let (w, h) = text.trim().split_once(['x', 'X', '*']).ok_or_else(bad)?;
    let w = w.trim().parse::<u32>().map_err(|_| bad())?;
    let h = h.trim().parse::<u32>().map_err(|_| bad())?;
    Ok((w, h))
}

/// The size of a request whose API documents no default: neither side given, none
/// (the model's default, or the init image's); one side given, the other is `default`.
pub fn optional_size(
    width: Option<u32>,
    height: Option<u32>,
    default: u32,
) -> (Option<u32>, Option<u32>) {
    match (width, height) {
        (None, None) => (None, None),
        (w, h) => (Some(w.unwrap_or(default)), Some(h.unwrap_or(default))),
    }
}

/// An image side the models can produce: a multiple of `step` within `min..=max`.
pub fn check_side(field: &str, value: u32, min: u32, max: u32, step: u32) -> Result<u32, ApiError> {
    if value < min || value > max || !value.is_multiple_of(step) {
        return Err(ApiError::field(
            field,
            format!("must be a multiple of {step} from {min} to {max} (got {value})"),
        ));
    }
    Ok(value)
}

/// Prompts longer than this are refused outright; the text encoders read only
/// An optional prompt field (negative_prompt), checked as a prompt. Empty means not
/// given, in every dialect alike: for SDXL, diffusers makes a different image for ""
/// than for no negative prompt (zero embeddings), and a client sending "" means none.
pub fn optional_prompt(f: &Fields, name: &str) -> Result<Option<String>, ApiError> {
    f.string(name)?
        .filter(|p| !p.is_empty())
        .map(|p| check_prompt(name, p))
        .transpose()
}

/// the first 77 tokens anyway, this only keeps absurd bodies out.
pub use contract::limits::MAX_PROMPT_CHARS;

pub fn check_prompt(field: &str, text: String) -> Result<String, ApiError> {
    if text.chars().count() > MAX_PROMPT_CHARS {
        return Err(ApiError::field(
            field,
            format!("longer than {MAX_PROMPT_CHARS} characters"),
        ));
    }
    Ok(text)
}

/// Seeds: 0 means "pick one for me" in the APIs we speak.
pub fn seed_or_random(seed: Option<u64>) -> Option<u64> {
    seed.filter(|&s| s != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("size", "1024x768").unwrap(), (1024, 768));
        assert_eq!(parse_size("size", " 512 X 512 ").unwrap(), (512, 512));
        for bad in ["1024", "axb", "1024x", "-8x8", ""] {
            let e = parse_size("size", bad).unwrap_err();
            assert!(
                e.message.starts_with("size: must be WIDTHxHEIGHT"),
                "{bad}: {}",
                e.message
            );
        }
    }

    #[test]
    fn sides() {
        assert_eq!(check_side("width", 512, 64, 2048, 8).unwrap(), 512);
        let e = check_side("width", 500, 64, 2048, 8).unwrap_err();
        assert_eq!(
            e.message,
            "width: must be a multiple of 8 from 64 to 2048 (got 500)"
        );
        assert!(check_side("height", 4096, 64, 2048, 8).is_err());
        assert!(check_side("height", 0, 64, 2048, 8).is_err());
    }

    #[test]
    fn sizes_from_input_images() {
        let rule = SizeRule {
            step: 64,
            min: 128,
            max: 1024,
        };
        assert_eq!(rule.size_for((512, 512)), (512, 512));
        assert_eq!(rule.size_for((4000, 3000)), (1024, 768));
        assert_eq!(rule.size_for((100, 20)), (128, 128));
        assert_eq!(rule.size_for((700, 500)), (704, 512));
    }

    #[test]
    fn urls_and_prompts() {
        assert!(matches!(
            ImageSource::url("inputImage", " https://a.example/x.png "),
            Ok(ImageSource::Url(_))
        ));
        let e = ImageSource::url("inputImage", "dog.png").unwrap_err();
        assert!(
            e.message
                .starts_with("inputImage: not an absolute http(s) URL"),
            "{}",
            e.message
        );
        assert!(check_prompt("prompt", "x".repeat(MAX_PROMPT_CHARS + 1)).is_err());
        assert_eq!(seed_or_random(Some(0)), None);
        assert_eq!(seed_or_random(Some(5)), Some(5));
    }

    #[test]
    fn an_empty_negative_prompt_is_none_in_every_dialect() {
        let f = Fields::parse(br#"{"a":"","b":"blurry","c":null}"#).unwrap();
        assert_eq!(optional_prompt(&f, "a").unwrap(), None);
        assert_eq!(optional_prompt(&f, "b").unwrap().as_deref(), Some("blurry"));
        assert_eq!(optional_prompt(&f, "c").unwrap(), None);
        assert_eq!(optional_prompt(&f, "absent").unwrap(), None);
    }
}
