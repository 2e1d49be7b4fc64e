//! Fuzz targets: each takes arbitrary bytes and drives one parser the way a client's
//! bytes reach it. A target may refuse anything, but must not panic, hang or allocate
//! without bound. `scripts/fuzz TARGET SECONDS` runs one under AFL++ (cargo-afl, on
//! stable Rust); tests/replay.rs runs every committed corpus through the same
//! functions in CI.

mod targets;

pub use targets::{address, contract_json, dialects, image, multipart, spin_toml};

/// A target by name: the names are the corpus folders under fuzz/corpus/.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
}

pub const TARGETS: &[Target] = &[
    Target {
        name: "dialects",
        run: dialects,
    },
    Target {
        name: "multipart",
        run: multipart,
    },
    Target {
        name: "image",
        run: image,
    },
    Target {
        name: "address",
        run: address,
    },
    Target {
        name: "spin_toml",
        run: spin_toml,
    },
    Target {
        name: "contract_json",
        run: contract_json,
    },
];

pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// Splits `data` at its first newline: a short header line (a path, a content type)
/// and the bytes after it. Inputs without one are all header.
fn split_line(data: &[u8]) -> (&str, &[u8]) {
    let (line, rest) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    (std::str::from_utf8(line).unwrap_or(""), rest)
}
