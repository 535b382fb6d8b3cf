//! Request traces as published: the Azure LLM inference traces (CSV, `TIMESTAMP,
//! ContextTokens,GeneratedTokens`, date-time stamps), BurstGPT-style CSVs (numeric stamps,
//! `Request tokens`/`Response tokens`), and JSON lines such as Mooncake's
//! (`{"timestamp": ms, "input_length": .., "output_length": ..}`). Columns are found by name,
//! so column order and extra columns do not matter.

use serde_json::Value;

use super::TraceRequest;
use crate::calendar::Date;

/// What a numeric timestamp counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeUnit {
    Seconds,
    Milliseconds,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TraceError {
    #[error("line {line}: {reason}")]
    Row { line: usize, reason: String },
    #[error("no column for {0} (looked for: {1})")]
    MissingColumn(&'static str, String),
    #[error("no requests")]
    Empty,
}

const TIME: &[&str] = &["timestamp", "time", "arrivaltime", "arrivaltimestamp"];
const PROMPT: &[&str] = &[
    "contexttokens",
    "requesttokens",
    "prompttokens",
    "inputtokens",
    "inputlength",
    "promptlength",
];
const OUTPUT: &[&str] = &[
    "generatedtokens",
    "responsetokens",
    "completiontokens",
    "outputtokens",
    "outputlength",
];

/// `Request tokens`, `request_tokens` and `RequestTokens` are one name.
fn normalized(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// A trace's requests in arrival order, stamped in milliseconds from the first one and
/// spread out by `time_scale` (4.0 replays it four times slower). `numeric_unit` says what a
/// bare number in the time column counts; `None` takes Mooncake's milliseconds for JSON lines
/// and seconds for CSV.
pub fn parse_trace(
    text: &str,
    numeric_unit: Option<TimeUnit>,
    time_scale: f64,
) -> Result<Vec<TraceRequest>, TraceError> {
    let json_lines = text.trim_start().starts_with('{');
    let unit = numeric_unit.unwrap_or(if json_lines {
        TimeUnit::Milliseconds
    } else {
        TimeUnit::Seconds
    });
    let mut rows = if json_lines {
        parse_json_lines(text, unit)?
    } else {
        parse_csv(text, unit)?
    };
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    let first = rows.first().ok_or(TraceError::Empty)?.0;
    let scale = if time_scale.is_finite() && time_scale > 0.0 {
        time_scale
    } else {
        1.0
    };
    Ok(rows
        .into_iter()
        .map(|(at, prompt_tokens, output_tokens)| TraceRequest {
            arrival_ms: ((at - first) * scale * 1000.0).round() as u64,
            prompt_tokens,
            output_tokens,
        })
        .collect())
}

type Row = (f64, u64, u64);

fn parse_csv(text: &str, unit: TimeUnit) -> Result<Vec<Row>, TraceError> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((_, header)) = lines.next() else {
        return Err(TraceError::Empty);
    };
    let names: Vec<String> = header.split(',').map(normalized).collect();
    let column = |what: &'static str, candidates: &[&str]| {
        names
            .iter()
            .position(|name| candidates.contains(&name.as_str()))
            .ok_or_else(|| TraceError::MissingColumn(what, candidates.join(", ")))
    };
    let (time, prompt, output) = (
        column("the arrival time", TIME)?,
        column("prompt tokens", PROMPT)?,
        column("output tokens", OUTPUT)?,
    );
    lines
        .map(|(index, line)| {
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let field = |at: usize| fields.get(at).copied().unwrap_or("");
            let row = || -> Option<Row> {
                Some((
                    seconds(field(time), unit)?,
                    tokens(field(prompt))?,
                    tokens(field(output))?,
                ))
            };
            row().ok_or_else(|| TraceError::Row {
                line: index + 1,
                reason: format!("not a trace row: `{line}`"),
            })
        })
        .collect()
}

fn parse_json_lines(text: &str, unit: TimeUnit) -> Result<Vec<Row>, TraceError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(index, line)| {
            let error = |reason: String| TraceError::Row {
                line: index + 1,
                reason,
            };
            let object: serde_json::Map<String, Value> =
                serde_json::from_str(line).map_err(|e| error(format!("not a JSON object: {e}")))?;
            let find = |candidates: &[&str]| {
                object
                    .iter()
                    .find(|(name, _)| candidates.contains(&normalized(name).as_str()))
                    .map(|(_, value)| value)
            };
            let number = |what: &str, candidates: &[&str]| {
                find(candidates)
                    .ok_or_else(|| error(format!("no {what} ({})", candidates.join(", "))))
            };
            let at = match number("arrival time", TIME)? {
                Value::String(text) => seconds(text, unit),
                value => value.as_f64().map(|n| in_seconds(n, unit)),
            };
            let count = |value: &Value| value.as_f64().filter(|n| *n >= 0.0).map(|n| n as u64);
            match (
                at,
                count(number("prompt tokens", PROMPT)?),
                count(number("output tokens", OUTPUT)?),
            ) {
                (Some(at), Some(prompt), Some(output)) => Ok((at, prompt, output)),
                _ => Err(error(format!("not a trace row: `{line}`"))),
            }
        })
        .collect()
}

fn tokens(text: &str) -> Option<u64> {
    text.parse::<u64>().ok().or_else(|| {
        text.parse::<f64>()
            .ok()
            .filter(|n| *n >= 0.0)
            .map(|n| n as u64)
    })
}

fn in_seconds(number: f64, unit: TimeUnit) -> f64 {
    match unit {
        TimeUnit::Seconds => number,
        TimeUnit::Milliseconds => number / 1000.0,
    }
}

/// A bare number in `unit`, or `YYYY-MM-DD HH:MM:SS[.fraction]` (or with a `T`; UTC), as
/// seconds.
fn seconds(text: &str, unit: TimeUnit) -> Option<f64> {
    if let Ok(number) = text.parse::<f64>() {
        return number.is_finite().then(|| in_seconds(number, unit));
    }
    let (date, time) = text.split_once([' ', 'T'])?;
    let date: Date = date.parse().ok()?;
    let time = time.trim_end_matches('Z');
    let mut parts = time.split(':');
    let hours = parts.next()?.parse::<u32>().ok()?;
    let minutes = parts.next()?.parse::<u32>().ok()?;
    let seconds = parts.next()?.parse::<f64>().ok()?;
    if parts.next().is_some() || hours > 23 || minutes > 59 || !(0.0..61.0).contains(&seconds) {
        return None;
    }
    Some(date.start_unix() as f64 + f64::from(hours * 3_600 + minutes * 60) + seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrivals(trace: &[TraceRequest]) -> Vec<(u64, u64, u64)> {
        trace
            .iter()
            .map(|r| (r.arrival_ms, r.prompt_tokens, r.output_tokens))
            .collect()
    }

    #[test]
    fn reads_the_azure_format() {
        let text = "TIMESTAMP,ContextTokens,GeneratedTokens\n\
                    2023-11-16 18:17:04.0319600,3180,8\n\
                    2023-11-16 18:17:03.9799600,4808,10\n";
        let trace = parse_trace(text, None, 1.0).unwrap();
        assert_eq!(arrivals(&trace), vec![(0, 4808, 10), (52, 3180, 8)]);
        assert_eq!(
            seconds("1970-01-01 00:00:01.5", TimeUnit::Seconds),
            Some(1.5)
        );
        assert_eq!(
            seconds("2023-11-16 18:17:03.0", TimeUnit::Seconds),
            Some(1_700_158_623.0)
        );
        assert_eq!(seconds("2023-11-16", TimeUnit::Seconds), None);
        assert_eq!(seconds("2023-11-16 18:xx:03", TimeUnit::Seconds), None);
    }

    #[test]
    fn reads_burstgpt_columns_in_any_order_and_slows_a_trace_down() {
        let text = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n\
                    5,ChatGPT,472,18,490,Conversation log\n\
                    7.5,GPT-4,1000,0,1000,Conversation log\n";
        let trace = parse_trace(text, None, 4.0).unwrap();
        assert_eq!(arrivals(&trace), vec![(0, 472, 18), (10_000, 1000, 0)]);
    }

    #[test]
    fn reads_mooncake_json_lines_in_milliseconds() {
        let text = r#"{"timestamp": 0, "input_length": 6955, "output_length": 52, "hash_ids": [0, 1]}
{"timestamp": 2000, "input_length": 12000, "output_length": 300, "hash_ids": []}
"#;
        let trace = parse_trace(text, None, 1.0).unwrap();
        assert_eq!(arrivals(&trace), vec![(0, 6955, 52), (2000, 12000, 300)]);
        let in_seconds = parse_trace(text, Some(TimeUnit::Seconds), 1.0).unwrap();
        assert_eq!(in_seconds[1].arrival_ms, 2_000_000);
    }

    #[test]
    fn says_what_is_wrong_with_a_trace() {
        assert_eq!(parse_trace("", None, 1.0), Err(TraceError::Empty));
        assert_eq!(
            parse_trace("TIMESTAMP,ContextTokens,GeneratedTokens\n", None, 1.0),
            Err(TraceError::Empty)
        );
        assert!(matches!(
            parse_trace("when,prompt,output\n1,2,3\n", None, 1.0),
            Err(TraceError::MissingColumn("the arrival time", _))
        ));
        assert_eq!(
            parse_trace(
                "timestamp,prompt_tokens,output_tokens\n1,2,3\n2,x,3\n",
                None,
                1.0
            ),
            Err(TraceError::Row {
                line: 3,
                reason: "not a trace row: `2,x,3`".into()
            })
        );
        assert!(matches!(
            parse_trace("{\"timestamp\": 1}\n", None, 1.0),
            Err(TraceError::Row { line: 1, .. })
        ));
    }
}
