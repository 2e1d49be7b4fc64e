//! A1111's prompt emphasis and long prompts (stable-diffusion-webui's
//! `parse_prompt_attention` and its CLIP wrapper, emphasis mode "Original"), for
//! [`crate::Emphasis::A1111`]:
//!
//! * `(text)` multiplies the weight of `text` by 1.1, `[text]` divides it by 1.1,
//!   `(text:1.3)` multiplies it by 1.3; they nest; `\(`, `\)`, `\[`, `\]` and `\\` are the
//!   characters themselves; a bracket left open applies to the end; `BREAK` ends a chunk;
//! * each fragment is tokenized alone; tokens fill chunks of 75, and a chunk that fills up
//!   moves what follows its last comma (within 20 tokens) on to the next chunk;
//! * a chunk is `BOS + its tokens + EOS`, then the tokenizer's pad token up to 77; each is
//!   encoded as the model encodes a prompt, multiplied by its tokens' weights and rescaled
//!   to the mean it had before ([`reweight`]).
//!
//! (No crate implements this syntax; it is A1111's, written from its definition.)

use anyhow::Result;
use candle_core::Tensor;

/// Tokens per chunk, between BOS and EOS.
pub const CHUNK: usize = 75;
/// How far back a full chunk looks for a comma to break at.
const COMMA_BACKTRACK: usize = 20;

/// A piece of prompt text and its weight; `None` is a `BREAK`.
#[derive(Clone, Debug, PartialEq)]
pub struct Fragment {
    pub text: String,
    pub weight: Option<f64>,
}

/// `text` as A1111 reads it: fragments with their weights, runs of equal weight merged.
pub fn parse(text: &str) -> Vec<Fragment> {
    let mut res: Vec<(String, f64)> = Vec::new();
    let mut round: Vec<usize> = Vec::new();
    let mut square: Vec<usize> = Vec::new();
    let multiply = |res: &mut Vec<(String, f64)>, from: usize, by: f64| {
        for r in &mut res[from..] {
            r.1 *= by;
        }
    };
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' => {
                // `\(` `\)` `\[` `\]` `\\`: the character; a lone `\`: nothing.
                match chars.get(i + 1) {
                    Some(&n) if "()[]\\".contains(n) => {
                        res.push((n.to_string(), 1.0));
                        i += 2;
                    }
                    _ => {
                        res.push((String::new(), 1.0));
                        i += 1;
                    }
                }
                continue;
            }
            '(' => round.push(res.len()),
            '[' => square.push(res.len()),
            ':' => {
                match weight_closer(&chars, i) {
                    Some((weight, end)) if !round.is_empty() => {
                        let from = round.pop().expect("not empty");
                        multiply(&mut res, from, weight);
                        i = end;
                    }
                    // A weight without an open bracket is text, as A1111 reads it.
                    Some((_, end)) => {
                        push_text(&mut res, &chars[i..end].iter().collect::<String>());
                        i = end;
                    }
                    None => {
                        push_text(&mut res, ":");
                        i += 1;
                    }
                }
                continue;
            }
            ')' => match round.pop() {
                Some(from) => multiply(&mut res, from, 1.1),
                None => push_text(&mut res, ")"),
            },
            ']' => match square.pop() {
                Some(from) => multiply(&mut res, from, 1.0 / 1.1),
                None => push_text(&mut res, "]"),
            },
            _ => {
                let start = i;
                while i < chars.len() && !"\\()[]:".contains(chars[i]) {
                    i += 1;
                }
                push_text(&mut res, &chars[start..i].iter().collect::<String>());
                continue;
            }
        }
        i += 1;
    }
    for from in round {
        multiply(&mut res, from, 1.1);
    }
    for from in square {
        multiply(&mut res, from, 1.0 / 1.1);
    }
    if res.is_empty() {
        res.push((String::new(), 1.0));
    }
    let mut merged: Vec<(String, f64)> = Vec::with_capacity(res.len());
    for (text, weight) in res {
        match merged.last_mut() {
            Some(last) if last.1 == weight => last.0.push_str(&text),
            _ => merged.push((text, weight)),
        }
    }
    merged
        .into_iter()
        .map(|(text, w)| Fragment {
            weight: (!(text == "BREAK" && w == -1.0)).then_some(w),
            text,
        })
        .collect()
}

/// `:\s*([+-]?[.\d]+)\s*\)` at `chars[at]`: the weight and the index after the `)`.
fn weight_closer(chars: &[char], at: usize) -> Option<(f64, usize)> {
    let mut i = at + 1;
    while chars.get(i).is_some_and(|c| c.is_whitespace()) {
        i += 1;
    }
    let start = i;
    if chars.get(i).is_some_and(|c| *c == '+' || *c == '-') {
        i += 1;
    }
    let digits = i;
    while chars
        .get(i)
        .is_some_and(|c| *c == '.' || c.is_ascii_digit())
    {
        i += 1;
    }
    if i == digits {
        return None;
    }
    let number: String = chars[start..i].iter().collect();
    while chars.get(i).is_some_and(|c| c.is_whitespace()) {
        i += 1;
    }
    if chars.get(i) != Some(&')') {
        return None;
    }
    // A1111 stops on a number Python cannot read ("1.2.3"); here it is text.
    Some((number.parse::<f64>().ok()?, i + 1))
}

/// A text run, split at `BREAK` (a whole word, with the whitespace around it).
fn push_text(res: &mut Vec<(String, f64)>, text: &str) {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    let mut rest = text;
    loop {
        let found = rest.match_indices("BREAK").find(|(at, _)| {
            let before = rest[..*at].chars().next_back();
            let after = rest[at + 5..].chars().next();
            !before.is_some_and(word) && !after.is_some_and(word)
        });
        let Some((at, _)) = found else {
            res.push((rest.to_string(), 1.0));
            return;
        };
        res.push((rest[..at].trim_end().to_string(), 1.0));
        res.push(("BREAK".to_string(), -1.0));
        rest = rest[at + 5..].trim_start();
    }
}

/// One chunk: 77 token ids and their weights.
#[derive(Clone, Debug, PartialEq)]
pub struct Chunk {
    pub ids: Vec<u32>,
    pub weights: Vec<f32>,
    /// Tokens up to and including the first EOS (the attention mask's length).
    pub len: usize,
}

/// Special ids of a tokenizer, for [`chunks`].
#[derive(Clone, Copy, Debug)]
pub struct Specials {
    pub bos: u32,
    pub eos: u32,
    pub pad: u32,
    /// `,</w>`, if the vocabulary has it.
    pub comma: Option<u32>,
}

/// The chunks of `fragments`, each fragment's text tokenized by `tokenize`.
pub fn chunks(
    fragments: &[Fragment],
    specials: Specials,
    tokenize: &mut dyn FnMut(&str) -> Result<Vec<u32>>,
) -> Result<Vec<Chunk>> {
    let mut out = Vec::new();
    let mut tokens: Vec<u32> = Vec::new();
    let mut weights: Vec<f32> = Vec::new();
    let mut last_comma: Option<usize> = None;
    let finish = |out: &mut Vec<Chunk>, tokens: &mut Vec<u32>, weights: &mut Vec<f32>| {
        let fill = CHUNK - tokens.len();
        let mut ids = Vec::with_capacity(CHUNK + 2);
        ids.push(specials.bos);
        ids.append(tokens);
        ids.push(specials.eos);
        let len = ids.len();
        ids.resize(CHUNK + 2, specials.pad);
        let mut w = Vec::with_capacity(CHUNK + 2);
        w.push(1.0);
        w.append(weights);
        w.resize(CHUNK + 2, 1.0);
        debug_assert_eq!(len + fill, CHUNK + 2);
        out.push(Chunk {
            ids,
            weights: w,
            len,
        });
    };
    for f in fragments {
        let Some(weight) = f.weight else {
            finish(&mut out, &mut tokens, &mut weights);
            last_comma = None;
            continue;
        };
        for tok in tokenize(&f.text)? {
            if Some(tok) == specials.comma {
                last_comma = Some(tokens.len());
            } else if tokens.len() == CHUNK
                && let Some(at) = last_comma
                && tokens.len() - at <= COMMA_BACKTRACK
            {
                let moved_t = tokens.split_off(at + 1);
                let moved_w = weights.split_off(at + 1);
                finish(&mut out, &mut tokens, &mut weights);
                last_comma = None;
                tokens = moved_t;
                weights = moved_w;
            }
            if tokens.len() == CHUNK {
                finish(&mut out, &mut tokens, &mut weights);
                last_comma = None;
            }
            tokens.push(tok);
            weights.push(weight as f32);
        }
    }
    if !tokens.is_empty() || out.is_empty() {
        finish(&mut out, &mut tokens, &mut weights);
    }
    Ok(out)
}

/// A1111's "Original" emphasis on one chunk's encoding `z` (`(1, 77, dim)`): `z` times each
/// token's weight, rescaled to the mean `z` had.
pub fn reweight(z: &Tensor, weights: &[f32]) -> Result<Tensor> {
    if weights.iter().all(|&w| w == 1.0) {
        return Ok(z.clone());
    }
    let original = z.mean_all()?;
    let w = Tensor::from_slice(weights, (1, weights.len(), 1), z.device())?.to_dtype(z.dtype())?;
    let weighted = z.broadcast_mul(&w)?;
    let ratio = (original / weighted.mean_all()?)?;
    Ok(weighted.broadcast_mul(&ratio)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frags(text: &str) -> Vec<(String, Option<f64>)> {
        parse(text)
            .into_iter()
            .map(|f| (f.text, f.weight.map(|w| (w * 1e6).round() / 1e6)))
            .collect()
    }

    #[test]
    fn a1111s_own_examples() {
        // From prompt_parser.py's doctests.
        let s = |t: &str, w: f64| (t.to_string(), Some(w));
        assert_eq!(frags("normal text"), [s("normal text", 1.0)]);
        assert_eq!(
            frags("an (important) word"),
            [s("an ", 1.0), s("important", 1.1), s(" word", 1.0)]
        );
        assert_eq!(frags("(unbalanced"), [s("unbalanced", 1.1)]);
        assert_eq!(frags("\\(literal\\]"), [s("(literal]", 1.0)]);
        assert_eq!(
            frags("(unnecessary)(parens)"),
            [s("unnecessaryparens", 1.1)]
        );
        assert_eq!(
            frags("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).")[..5],
            [
                s("a ", 1.0),
                s("house", 1.5730),
                s(" ", 1.1),
                s("on", 1.0),
                s(" a ", 1.1)
            ]
        );
        assert_eq!(frags("[unbalanced"), [s("unbalanced", 0.909091)]);
        assert_eq!(
            frags("a BREAK b"),
            [s("a", 1.0), ("BREAK".to_string(), None), s("b", 1.0)]
        );
        assert_eq!(
            frags("BREAKFAST (x:2"),
            [s("BREAKFAST ", 1.0), s("x:2", 1.1)]
        );
        assert_eq!(frags(""), [s("", 1.0)]);
    }

    #[test]
    fn chunks_of_75_break_after_a_comma() {
        let specials = Specials {
            bos: 1000,
            eos: 1001,
            pad: 0,
            comma: Some(7),
        };
        // 70 tokens, a comma, 10 more: the chunk that fills up moves the 10 on.
        let mut ids: Vec<u32> = (0..70).map(|_| 5).collect();
        ids.push(7);
        ids.extend((0..10).map(|_| 6));
        let frags = [Fragment {
            text: "x".into(),
            weight: Some(1.5),
        }];
        let got = chunks(&frags, specials, &mut |_| Ok(ids.clone())).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].ids.len(), 77);
        assert_eq!(got[0].len, 73); // BOS, 71 tokens, EOS
        assert_eq!(got[0].ids[71], 7);
        assert_eq!(got[0].ids[72], 1001);
        assert_eq!(got[0].ids[73], 0);
        assert_eq!(&got[1].ids[1..11], &[6; 10]);
        assert_eq!(got[1].weights[1], 1.5);
        assert_eq!(got[1].weights[11], 1.0);
    }
}
