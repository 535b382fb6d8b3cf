//! Stop sequences over streamed text: text that could still become a stop sequence is held
//! back, so a caller never sees part of a stop sequence.

#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
    /// The stop sequence that ended the text, once one has.
    matched: Option<String>,
}

/// What the caller may see after pushing more text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopOutcome {
    /// Text safe to emit now (possibly empty).
    Continue(String),
    /// A stop sequence was found: emit this text, then finish.
    Stopped(String),
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> StopMatcher {
        StopMatcher {
            stops: stops.into_iter().filter(|stop| !stop.is_empty()).collect(),
            pending: String::new(),
            matched: None,
        }
    }

    pub fn push(&mut self, text: &str) -> StopOutcome {
        if self.stops.is_empty() {
            return StopOutcome::Continue(text.to_owned());
        }
        self.pending.push_str(text);
        let earliest = self
            .stops
            .iter()
            .filter_map(|stop| Some((self.pending.find(stop.as_str())?, stop)))
            .min_by_key(|(position, _)| *position);
        if let Some((position, stop)) = earliest {
            let emitted = self.pending[..position].to_owned();
            self.matched = Some(stop.clone());
            self.pending.clear();
            return StopOutcome::Stopped(emitted);
        }
        // Hold back the longest suffix that is a prefix of some stop sequence.
        let held = self
            .stops
            .iter()
            .flat_map(|stop| {
                (1..stop.len())
                    .filter(|len| stop.is_char_boundary(*len))
                    .map(move |len| &stop[..len])
            })
            .filter(|prefix| self.pending.ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let cut = self.pending.len() - held;
        let emitted = self.pending[..cut].to_owned();
        self.pending.drain(..cut);
        StopOutcome::Continue(emitted)
    }

    /// The stop sequence that ended the text, if one did (what vLLM reports as `stop_reason`).
    pub fn matched(&self) -> Option<&str> {
        self.matched.as_deref()
    }

    /// The text still held back when generation ends for another reason.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut matcher = StopMatcher::new(stops.iter().map(|stop| stop.to_string()).collect());
        let mut out = String::new();
        for piece in pieces {
            match matcher.push(piece) {
                StopOutcome::Continue(text) => out.push_str(&text),
                StopOutcome::Stopped(text) => {
                    out.push_str(&text);
                    return (out, true);
                }
            }
        }
        out.push_str(&matcher.finish());
        (out, false)
    }

    #[test]
    fn stops_across_pieces_and_never_leaks_a_partial_stop() {
        let cases: &[(&[&str], &[&str], &str, bool)] = &[
            (&[], &["a", "b"], "ab", false),
            (&["\n\n"], &["hello", "\n", "\nworld"], "hello", true),
            (&["END"], &["the E", "N", "D more"], "the ", true),
            (&["END"], &["the E", "N", "d"], "the ENd", false),
            (&["ab", "b"], &["xab"], "x", true),
            (&["é!"], &["caf", "é", "!"], "caf", true),
        ];
        for (stops, pieces, expected, stopped) in cases {
            assert_eq!(
                run(stops, pieces),
                (expected.to_string(), *stopped),
                "{stops:?} {pieces:?}"
            );
        }
    }

    #[test]
    fn the_earliest_stop_in_the_text_is_the_one_matched() {
        let mut matcher = StopMatcher::new(vec!["b".into(), "ab".into(), "zz".into()]);
        assert_eq!(matcher.matched(), None);
        assert_eq!(matcher.push("xab"), StopOutcome::Stopped("x".into()));
        assert_eq!(matcher.matched(), Some("ab"));
    }
}
