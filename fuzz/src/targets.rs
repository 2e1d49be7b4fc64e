//! The targets. Each reaches the code the way a client's bytes do; where a parser
//! accepts something, what follows it (size rules, header checks, re-parsing what we
//! write) runs too, and properties that must hold are asserted.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use bytes::Bytes;
use contract::image_header::read_header;
use contract::limits::MAX_INIT_PIXELS;
use contract::{GenerateRequest, GenerateResult};
use edge::dialects::{self, Incoming};
use edge::image_url::{ImageHosts, Origin};
use edge::input_image::{self, ImageLimits, Provenance};
use edge::job::ImageSource;

use crate::split_line;

/// One request to the edge: `PATH\nCONTENT-TYPE\nBODY`, sent with every dialect's
/// key header, as the component hands it to the dialect that serves the path.
pub fn dialects(data: &[u8]) {
    let (path, rest) = split_line(data);
    let (content_type, body) = split_line(rest);
    let Some(dialect) = dialects::for_path(path) else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    headers.insert("ocp-apim-subscription-key", "k".parse().unwrap());
    headers.insert("authorization", "Bearer k".parse().unwrap());
    if let Ok(value) = content_type.parse() {
        headers.insert("content-type", value);
    }
    let req = Incoming::new(dialect.method(), path.into(), headers, body.to_vec());
    let parsed = dialect.credential(&req).and_then(|_| dialect.parse(&req));
    let job = match parsed {
        Ok(job) => job,
        Err(err) => {
            let out = dialect.render_error(&err, "trace");
            assert!((400..600).contains(&out.status), "{err:?}");
            return;
        }
    };
    let Some(init) = &job.init else {
        return;
    };
    if let ImageSource::Bytes(bytes) = &init.source
        && let Ok(size) = input_image::inspect(
            bytes,
            ImageLimits::default(),
            init.field,
            Provenance::ClientBytes,
        )
        && let Some(rule) = job.size_from_init
    {
        let (w, h) = rule.size_for(size);
        assert!((rule.min..=rule.max).contains(&w) && (rule.min..=rule.max).contains(&h));
    }
}

/// A multipart body: `CONTENT-TYPE\nBODY`, read by the edge (client uploads) and by
/// the contract's wire format (the server's side).
pub fn multipart(data: &[u8]) {
    let (content_type, body) = split_line(data);
    if let Ok(mut form) = edge::multipart::parse(Some(content_type), body.to_vec()) {
        let _ = form.take_file("init_image");
        let _ = form.take_file("image");
    }
    let _ = contract::wire::read(Some(content_type), Bytes::copy_from_slice(body));
    let _ = contract::wire::read_images(content_type, Bytes::copy_from_slice(body));
}

/// An init image's bytes: sniffed and size-checked from the header (the edge), then
/// decoded and fitted under the contract's pixel cap (the server), and as base64.
pub fn image(data: &[u8]) {
    let checked = read_header(data, MAX_INIT_PIXELS).map(|h| h.upright_size());
    let inspected = input_image::inspect(
        data,
        ImageLimits::default(),
        "init_image",
        Provenance::ClientBytes,
    );
    // The edge and the server must agree on what passes the header check.
    assert_eq!(checked.is_ok(), inspected.is_ok());
    if let Ok(img) = contract::init_image::decode(data, MAX_INIT_PIXELS) {
        assert_eq!(checked.ok(), Some(img.dimensions()));
        let fitted = contract::init_image::fit(img, 24, 16);
        assert_eq!(fitted.dimensions(), (24, 16));
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(bytes) = input_image::decode_base64(text, ImageLimits::default(), "image")
    {
        let _ = read_header(&bytes, MAX_INIT_PIXELS);
    }
}

/// A URL, host or address as text: image URLs against the edge's rules, the
/// `image_hosts` variable, spin.toml's allowed-hosts syntax matched against the URL,
/// and address classification.
pub fn address(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let text = text.as_ref();
    let _ = ImageHosts::parse(text);
    let _ = Origin::parse(text);
    let _ = edge::stash::links_origin(None, Some(text), Some(text));
    if let Ok(ip) = text.trim().parse::<IpAddr>() {
        // An address the policy calls special is never public, and the reverse.
        assert_eq!(
            address_policy::special(ip).is_none(),
            address_policy::is_public(ip)
        );
    }
    let (entry, target) = text.split_once(' ').unwrap_or((text, text));
    let allowed = spin_manifest::AllowedHost::parse(entry).ok();
    if let Ok(url) = url::Url::parse(target) {
        let _ = ImageHosts::default().check(&url, "image");
        if let (Some(entry), Some(host)) = (allowed, url.host_str())
            && let Ok(host) = spin_manifest::Host::parse(host)
        {
            let port = url.port_or_known_default().unwrap_or(0);
            let _ = spin_manifest::verdict(&[entry], url.scheme(), &host, port);
        }
    }
}

/// A spin.toml, read as edge-host reads it (no variable values from outside).
pub fn spin_toml(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = spin_manifest::App::parse(text, Path::new("."), &BTreeMap::<String, String>::new());
    }
}

/// The contract's JSON: a generate request as the server reads it (the wire reader),
/// which must come through a round trip unchanged (the edge writes what it read),
/// and the edge's reading of a JSON body.
pub fn contract_json(data: &[u8]) {
    if let Ok(got) = contract::wire::read(Some("application/json"), Bytes::copy_from_slice(data)) {
        let again: GenerateRequest =
            serde_json::from_slice(&serde_json::to_vec(&got.request).unwrap()).unwrap();
        assert_eq!(again, got.request);
    }
    let _ = serde_json::from_slice::<GenerateResult>(data);
    if let Ok(fields) = edge::fields::Fields::parse(data) {
        for name in fields.names() {
            let _ = fields.string(name);
            let _ = fields.number(name, 0.0..=1.0);
            let _ = fields.integer(name, 0..=100);
            let _ = fields.seed(name);
            let _ = fields.yes_no(name);
        }
    }
}
