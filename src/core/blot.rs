//! Blotting secrets out of text that people see (pages, the timeline, GitHub comments): an
//! agent holds its provider's key, a gate runs the agent's code, and either may print what
//! it holds. What is blotted is the exact value; an agent talked into encoding a key is not
//! stopped here (nor from committing it), which is why its raw output is shown to operators
//! only. Imports nothing of autodev.

/// What replaces a secret.
pub const BLOT: &str = "[secret]";

/// The shortest value taken for a secret: blotting `true` or `1` would garble every text.
pub const MIN_SECRET: usize = 8;

/// The shortest piece of a secret blotted where a text was cut through it (at the start of
/// a kept tail) or is still being written (at its end).
const MIN_PIECE: usize = 4;

/// The values to blot out, longest first, so a secret that holds another goes whole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Secrets(Vec<String>);

impl Secrets {
    pub fn new(values: impl IntoIterator<Item = String>) -> Self {
        let mut kept: Vec<String> = Vec::new();
        for value in values {
            let value = value.trim();
            if value.len() >= MIN_SECRET && !kept.iter().any(|k| k == value) {
                kept.push(value.to_owned());
            }
        }
        kept.sort_by_key(|v| std::cmp::Reverse(v.len()));
        Self(kept)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `text` with every whole secret in it blotted out.
    pub fn blot(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for secret in &self.0 {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), BLOT);
            }
        }
        out
    }

    /// The same for the tail of a stream that is still being written: also a secret's end
    /// where the tail was cut through it, and a secret's beginning where the tail ends in the
    /// middle of one being printed.
    pub fn blot_tail(&self, text: &str) -> String {
        let mut out = self.blot(text);
        for secret in &self.0 {
            if let Some(n) = overlap(secret, &out, End::Front) {
                out.replace_range(..n, BLOT);
            }
            if let Some(n) = overlap(secret, &out, End::Back) {
                let at = out.len() - n;
                out.replace_range(at.., BLOT);
            }
        }
        out
    }
}

#[derive(Clone, Copy)]
enum End {
    /// The text starts with the end of the secret.
    Front,
    /// The text ends with the beginning of the secret.
    Back,
}

/// The length of the longest piece of `secret` (at least [`MIN_PIECE`], shorter than the
/// whole) that `text` starts with (the secret's end) or ends with (its beginning).
fn overlap(secret: &str, text: &str, end: End) -> Option<usize> {
    let longest = (secret.len() - 1).min(text.len());
    (MIN_PIECE..=longest).rev().find(|&n| match end {
        End::Front => {
            secret.is_char_boundary(secret.len() - n) && {
                let piece = &secret[secret.len() - n..];
                text.as_bytes().starts_with(piece.as_bytes())
            }
        }
        End::Back => {
            secret.is_char_boundary(n) && {
                let piece = &secret[..n];
                text.as_bytes().ends_with(piece.as_bytes())
            }
        }
    })
}

/// The lines of a secret as output would show them: a PEM key line by line, without its
/// `-----BEGIN ...-----` armour (which every key shares); any other value whole.
pub fn secret_lines(value: &str) -> impl Iterator<Item = String> + '_ {
    value
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("-----"))
        .map(str::to_owned)
}

/// The string values of a JSON document (an agent CLI's login file), at any depth.
pub fn json_strings(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| json_strings(v, out)),
        serde_json::Value::Object(map) => map.values().for_each(|v| json_strings(v, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_secrets_and_cut_pieces_are_blotted() {
        let s = Secrets::new(["sk-ant-api03-SECRET".to_owned(), "short".to_owned()]);
        assert_eq!(s.blot("key=sk-ant-api03-SECRET."), "key=[secret].");
        // Too short to be taken for a secret.
        assert_eq!(s.blot("short"), "short");
        // A tail that begins in the middle of the key, and one that ends in it.
        assert_eq!(s.blot_tail("nt-api03-SECRET\nmore"), "[secret]\nmore");
        assert_eq!(s.blot_tail("more\nsk-ant-ap"), "more\n[secret]");
        // A piece shorter than four is left: three characters of a key give nothing away.
        assert_eq!(s.blot_tail("ET and sk-"), "ET and sk-");
        assert_eq!(s.blot_tail("plain text"), "plain text");
    }

    #[test]
    fn a_secret_within_another_goes_with_the_longer() {
        let s = Secrets::new(["abcdefgh".to_owned(), "xxabcdefghyy".to_owned()]);
        assert_eq!(s.blot("<xxabcdefghyy>"), "<[secret]>");
    }
}
