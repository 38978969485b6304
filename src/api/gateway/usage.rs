//! What a call used, read from the upstream's answer. Pure: bytes in, counts
//! out.
//!
//! A non-streaming answer carries `usage` in its JSON body. A streaming
//! answer is a server-sent event stream of JSON chunks; [`StreamTally`] reads
//! it as it passes through (the gateway forwards every byte at once and only
//! looks), keeping the delivered text and the final `usage` chunk when the
//! upstream sends one (`stream_options.include_usage`).

use serde_json::Value;

/// Prompt and completion tokens of one call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt: i64,
    pub completion: i64,
}

impl Usage {
    pub fn total(&self) -> i64 {
        self.prompt.saturating_add(self.completion)
    }
}

/// The `usage` object of an OpenAI-style answer or chunk, if it has a
/// complete one (embeddings report only `prompt_tokens`).
pub fn usage_of(v: &Value) -> Option<Usage> {
    let u = v.get("usage")?;
    let count = |name: &str| u.get(name).and_then(Value::as_i64).filter(|n| *n >= 0);
    let prompt = count("prompt_tokens")?;
    let completion = count("completion_tokens").unwrap_or(0);
    Some(Usage { prompt, completion })
}

/// The generated text of an answer or a stream chunk: every choice's
/// `message.content` / `delta.content` (chat) or `text` (completions).
pub fn text_of(v: &Value, out: &mut String) {
    let Some(choices) = v.get("choices").and_then(Value::as_array) else {
        return;
    };
    for c in choices {
        for path in [
            &["delta", "content"][..],
            &["message", "content"],
            &["text"],
        ] {
            let mut at = c;
            let mut found = true;
            for key in path {
                match at.get(*key) {
                    Some(next) => at = next,
                    None => {
                        found = false;
                        break;
                    }
                }
            }
            if let (true, Some(s)) = (found, at.as_str()) {
                out.push_str(s);
            }
        }
    }
}

/// Largest SSE line kept while waiting for its end (a longer one is not
/// parsed; its bytes are still forwarded).
const MAX_LINE: usize = 1 << 20;

/// Reads an SSE stream of OpenAI chunks as it is forwarded.
#[derive(Debug, Default)]
pub struct StreamTally {
    line: Vec<u8>,
    overlong: bool,
    /// Text delivered so far (all choices).
    pub text: String,
    /// The usage chunk, once seen.
    pub usage: Option<Usage>,
    /// Whether `data: [DONE]` was seen (the stream ended normally).
    pub done: bool,
    /// Chunks that carried generated text.
    pub content_chunks: u64,
}

impl StreamTally {
    /// Feeds the next bytes passed to the client.
    pub fn feed(&mut self, bytes: &[u8]) {
        for piece in bytes.split_inclusive(|b| *b == b'\n') {
            let complete = piece.last() == Some(&b'\n');
            if !self.overlong {
                if self.line.len() + piece.len() > MAX_LINE {
                    self.overlong = true;
                    self.line.clear();
                } else {
                    self.line.extend_from_slice(piece);
                }
            }
            if complete {
                if !self.overlong {
                    let line = std::mem::take(&mut self.line);
                    self.line_done(&line);
                    self.line = line;
                    self.line.clear();
                }
                self.overlong = false;
            }
        }
    }

    fn line_done(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let data = data.strip_prefix(b" ").unwrap_or(data);
        if data == b"[DONE]" {
            self.done = true;
            return;
        }
        let Ok(v) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        let before = self.text.len();
        text_of(&v, &mut self.text);
        if self.text.len() > before {
            self.content_chunks += 1;
        }
        if let Some(u) = usage_of(&v) {
            self.usage = Some(u);
        }
    }
}

/// The text of a request's prompt, for counting its tokens when the
/// upstream reported none: chat `messages[].content` (strings, or the text
/// parts of a content array) joined by newlines, or `prompt` / `input`
/// (a string or an array of strings).
pub fn prompt_text(request: &Value) -> String {
    let mut out = String::new();
    let mut push = |s: &str| {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(s);
    };
    if let Some(msgs) = request.get("messages").and_then(Value::as_array) {
        for m in msgs {
            match m.get("content") {
                Some(Value::String(s)) => push(s),
                Some(Value::Array(parts)) => {
                    for p in parts {
                        if let Some(s) = p.get("text").and_then(Value::as_str) {
                            push(s);
                        }
                    }
                }
                _ => {}
            }
        }
        return out;
    }
    for key in ["prompt", "input"] {
        match request.get(key) {
            Some(Value::String(s)) => push(s),
            Some(Value::Array(items)) => {
                for i in items {
                    if let Some(s) = i.as_str() {
                        push(s);
                    }
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn sse(chunks: &[Value], usage: Option<Value>) -> Vec<u8> {
        let mut out = Vec::new();
        for c in chunks {
            out.extend_from_slice(format!("data: {c}\n\n").as_bytes());
        }
        if let Some(u) = usage {
            out.extend_from_slice(
                format!("data: {}\n\n", json!({"choices": [], "usage": u})).as_bytes(),
            );
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
        out
    }

    fn delta(s: &str) -> Value {
        json!({"choices": [{"index": 0, "delta": {"content": s}}]})
    }

    #[test]
    fn a_non_streaming_answer_gives_usage_and_text() {
        let v = json!({"choices": [{"message": {"role": "assistant", "content": "Hi"}}],
                       "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}});
        assert_eq!(
            usage_of(&v),
            Some(Usage {
                prompt: 7,
                completion: 2
            })
        );
        let mut t = String::new();
        text_of(&v, &mut t);
        assert_eq!(t, "Hi");
        let emb = json!({"data": [], "usage": {"prompt_tokens": 5, "total_tokens": 5}});
        assert_eq!(
            usage_of(&emb),
            Some(Usage {
                prompt: 5,
                completion: 0
            })
        );
        assert_eq!(usage_of(&json!({"usage": {"prompt_tokens": -1}})), None);
    }

    #[test]
    fn the_prompt_text_covers_chat_parts_and_prompt_arrays() {
        let chat = json!({"messages": [{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": [{"type": "text", "text": "Hello"}]}]});
        assert_eq!(prompt_text(&chat), "Be brief.\nHello");
        assert_eq!(prompt_text(&json!({"prompt": ["a", "b"]})), "a\nb");
        assert_eq!(prompt_text(&json!({"input": "x"})), "x");
    }

    proptest! {
        /// However the stream is cut into reads, the tally sees the same
        /// text, usage and end.
        #[test]
        fn any_split_of_a_stream_tallies_the_same(
            words in proptest::collection::vec("[a-z é中]{0,6}", 0..12),
            cuts in proptest::collection::vec(0usize..400, 0..12),
            with_usage in any::<bool>(),
        ) {
            let chunks: Vec<Value> = words.iter().map(|w| delta(w)).collect();
            let usage = with_usage.then(|| json!({"prompt_tokens": 11, "completion_tokens": words.len()}));
            let bytes = sse(&chunks, usage);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort();
            let mut tally = StreamTally::default();
            let mut from = 0;
            for c in cuts.into_iter().chain([bytes.len()]) {
                tally.feed(&bytes[from..c]);
                from = c;
            }
            prop_assert_eq!(&tally.text, &words.concat());
            prop_assert!(tally.done);
            prop_assert_eq!(tally.usage, with_usage.then_some(Usage { prompt: 11, completion: words.len() as i64 }));
        }
    }

    #[test]
    fn a_cut_stream_keeps_what_was_delivered_and_no_usage() {
        let bytes = sse(
            &[delta("Hello"), delta(" world")],
            Some(json!({"prompt_tokens": 3, "completion_tokens": 2})),
        );
        let mut tally = StreamTally::default();
        let cut = bytes.windows(6).position(|w| w == b" world").unwrap();
        tally.feed(&bytes[..cut]);
        assert_eq!(tally.text, "Hello");
        assert_eq!(tally.usage, None);
        assert!(!tally.done);
    }
}
