//! The CLIP tokenizer must give the ids transformers' `CLIPTokenizer` gives (fixture from
//! `scripts/reference/make_tokenizer_fixtures.py`), including padding and truncation.

use inference::engine::{tiny, tokenizer::ClipTokenizer};
use serde_json::Value;

#[test]
fn ids_match_transformers() {
    let text = include_str!("fixtures/tokenizer_ids.json");
    let data: Value = serde_json::from_str(text).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("tiny");
    tiny::write_tiny_model(&model, 0).unwrap();
    let prompts = data["prompts"].as_array().unwrap();
    for sub in ["tokenizer", "tokenizer_2"] {
        let tok = ClipTokenizer::load(&model.join(sub)).unwrap();
        for (prompt, want) in prompts.iter().zip(data[sub].as_array().unwrap()) {
            let prompt = prompt.as_str().unwrap();
            let want: Vec<u32> = want
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let got = tok.encode_padded(prompt).unwrap();
            assert_eq!(got, want, "{sub}: {prompt:?}");
        }
    }
}

/// A tokenizer folder as transformers 5 saves it (`tokenizer.json`, no vocab.json/merges.txt).
#[test]
fn tokenizer_json_folder_matches_transformers() {
    let data: Value = serde_json::from_str(include_str!("fixtures/tokenizer_ids.json")).unwrap();
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer_json_v5");
    let tok = ClipTokenizer::load(&dir).unwrap();
    for (prompt, want) in data["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .zip(data["tokenizer_2"].as_array().unwrap())
    {
        let prompt = prompt.as_str().unwrap();
        let want: Vec<u32> = want
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tok.encode_padded(prompt).unwrap(), want, "{prompt:?}");
    }
}
