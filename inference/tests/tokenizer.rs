//! The CLIP tokenizer must give the ids transformers' `CLIPTokenizer` gives (fixture from
//! `scripts/reference/make_tokenizer_fixtures.py`), including padding and truncation.

use inference::engine::{tiny, tokenizer::ClipTokenizer};
use serde_json::Value;

fn fixture() -> Value {
    serde_json::from_str(include_str!("fixtures/tokenizer_ids.json")).unwrap()
}

/// Asserts that `tok` encodes every prompt of the fixture to the ids listed under `key`.
fn assert_ids(tok: &ClipTokenizer, data: &Value, key: &str) {
    let prompts = data["prompts"].as_array().unwrap();
    for (prompt, want) in prompts.iter().zip(data[key].as_array().unwrap()) {
        let prompt = prompt.as_str().unwrap();
        let want: Vec<u32> = want
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            tok.encode_padded(prompt).unwrap(),
            want,
            "{key}: {prompt:?}"
        );
    }
}

#[test]
fn ids_match_transformers() {
    let data = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("tiny");
    tiny::write_tiny_model(&model, 0).unwrap();
    for sub in ["tokenizer", "tokenizer_2"] {
        let tok = ClipTokenizer::load(&model.join(sub)).unwrap();
        assert_ids(&tok, &data, sub);
    }
}

/// A tokenizer folder as transformers 5 saves it (`tokenizer.json`, no vocab.json/merges.txt).
#[test]
fn tokenizer_json_folder_matches_transformers() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer_json_v5");
    let tok = ClipTokenizer::load(&dir).unwrap();
    assert_ids(&tok, &fixture(), "tokenizer_2");
}
