//! Tool calls on a model whose chat template does not know tools (SmolLM2's does not): the
//! functions are described in a system message, and the answer is constrained so that a call
//! is always well formed. `required` and a named function make the whole answer one call,
//! generated under the function's parameter schema; `auto` lets the answer be text or, when it
//! starts with `<tool_call>`, one call in the same shape. The call's JSON is
//! `{"name": ..., "arguments": {...}}`, which the reply turns into OpenAI's `tool_calls`.

use ferry_core::ApiError;
use serde_json::{Value, json};

use crate::grammar::{OutputConstraint, compact};

/// Where an `auto` answer says it is a call rather than text.
pub const CALL_OPEN: &str = "<tool_call>";
pub const CALL_CLOSE: &str = "</tool_call>";

#[derive(Debug, Clone, PartialEq)]
pub struct Function {
    pub name: String,
    pub description: Option<String>,
    pub parameters: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    Auto,
    Required,
    Named(String),
}

/// The tools a request offers and how the model may use them (absent for `none`).
#[derive(Debug, Clone, PartialEq)]
pub struct Tools {
    pub functions: Vec<Function>,
    pub choice: ToolChoice,
}

impl Tools {
    /// `tools`, `tool_choice` and `parallel_tool_calls` of a chat request; `None` when no
    /// tool may be called.
    pub fn from_request(raw: &Value) -> Result<Option<Tools>, ApiError> {
        let choice = match &raw["tool_choice"] {
            Value::Null => None,
            Value::String(text) => match text.as_str() {
                "none" => return Ok(None),
                "auto" => Some(ToolChoice::Auto),
                "required" => Some(ToolChoice::Required),
                _ => {
                    return Err(ApiError::invalid(
                        "tool_choice",
                        "tool_choice must be none, auto, required or {\"type\": \"function\", \"function\": {\"name\": ...}}",
                    ));
                }
            },
            Value::Object(object) => match object
                .get("function")
                .and_then(|function| function.get("name"))
                .and_then(Value::as_str)
            {
                Some(name) => Some(ToolChoice::Named(name.to_owned())),
                None => {
                    return Err(ApiError::invalid(
                        "tool_choice.function.name",
                        "a named tool_choice needs function.name",
                    ));
                }
            },
            _ => {
                return Err(ApiError::invalid(
                    "tool_choice",
                    "tool_choice must be a string or an object",
                ));
            }
        };
        let offered = match &raw["tools"] {
            Value::Null => {
                return match choice {
                    None | Some(ToolChoice::Auto) => Ok(None),
                    Some(_) => Err(ApiError::invalid(
                        "tool_choice",
                        "tool_choice asks for a tool, but the request has no tools",
                    )),
                };
            }
            Value::Array(tools) if !tools.is_empty() => tools,
            _ => {
                return Err(ApiError::invalid(
                    "tools",
                    "tools must be a non-empty array of functions",
                ));
            }
        };
        let mut functions = Vec::with_capacity(offered.len());
        for (index, tool) in offered.iter().enumerate() {
            let param = |field: &str| format!("tools[{index}].{field}");
            if tool["type"].as_str() != Some("function") {
                return Err(ApiError::invalid(
                    param("type"),
                    "only tools of type function are supported",
                ));
            }
            let function = &tool["function"];
            let name = function["name"].as_str().unwrap_or_default();
            let valid_name = !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !valid_name {
                return Err(ApiError::invalid(
                    param("function.name"),
                    "a function's name is 1 to 64 letters, digits, underscores or dashes",
                ));
            }
            if functions.iter().any(|f: &Function| f.name == name) {
                return Err(ApiError::invalid(
                    param("function.name"),
                    format!("two tools are named `{name}`"),
                ));
            }
            let parameters = match &function["parameters"] {
                Value::Null => json!({"type": "object", "properties": {}}),
                parameters @ Value::Object(_) => parameters.clone(),
                _ => {
                    return Err(ApiError::invalid(
                        param("function.parameters"),
                        "a function's parameters are a JSON Schema object",
                    ));
                }
            };
            functions.push(Function {
                name: name.to_owned(),
                description: function["description"].as_str().map(str::to_owned),
                parameters,
            });
        }
        let choice = choice.unwrap_or(ToolChoice::Auto);
        if let ToolChoice::Named(name) = &choice
            && !functions.iter().any(|function| &function.name == name)
        {
            return Err(ApiError::invalid(
                "tool_choice.function.name",
                format!("tool_choice names `{name}`, which is not among the tools"),
            ));
        }
        Ok(Some(Tools { functions, choice }))
    }

    /// The system message that tells the model what it may call and how.
    pub fn instructions(&self) -> String {
        let described: Vec<String> = self
            .functions
            .iter()
            .map(|function| {
                json!({"name": function.name, "description": function.description, "parameters": function.parameters})
                    .to_string()
            })
            .collect();
        let how = match &self.choice {
            ToolChoice::Auto => format!(
                "To call a function, answer with {CALL_OPEN}{{\"name\": <function name>, \"arguments\": <arguments object>}}{CALL_CLOSE} and nothing else; otherwise answer in text."
            ),
            ToolChoice::Required => "Answer with one function call: {\"name\": <function name>, \"arguments\": <arguments object>}.".to_owned(),
            ToolChoice::Named(name) => format!(
                "Answer with a call of {name}: {{\"name\": \"{name}\", \"arguments\": <arguments object>}}."
            ),
        };
        format!(
            "You can call these functions:\n{}\n{how}",
            described.join("\n")
        )
    }

    /// The schema of one call: `{"name": <one of the functions>, "arguments": <its params>}`.
    fn call_schema(&self) -> Value {
        let calls: Vec<Value> = self
            .functions
            .iter()
            .filter(|function| match &self.choice {
                ToolChoice::Named(name) => &function.name == name,
                _ => true,
            })
            .map(|function| {
                json!({
                    "type": "object",
                    "properties": {"name": {"const": function.name}, "arguments": function.parameters},
                    "required": ["name", "arguments"],
                    "additionalProperties": false
                })
            })
            .collect();
        match <[Value; 1]>::try_from(calls) {
            Ok([only]) => only,
            Err(calls) => json!({"anyOf": calls}),
        }
    }

    /// What the answer is constrained to.
    pub fn constraint(&self) -> OutputConstraint {
        match self.choice {
            ToolChoice::Required | ToolChoice::Named(_) => {
                OutputConstraint::JsonSchema(self.call_schema())
            }
            // Text, which may not start with `<`, or one call between the markers.
            ToolChoice::Auto => OutputConstraint::Lark(format!(
                "start: TEXT | call\ncall: \"{CALL_OPEN}\" %json {} \"{CALL_CLOSE}\"\nTEXT: /[^<](.|\\n)*/\n",
                compact(self.call_schema())
            )),
        }
    }

    /// The wrapping an answer's call has: what precedes `{"name": "` and follows its JSON.
    pub fn markers(&self) -> (&'static str, &'static str) {
        match self.choice {
            ToolChoice::Auto => (CALL_OPEN, CALL_CLOSE),
            _ => ("", ""),
        }
    }
}

/// One call an answer made, as OpenAI's `tool_calls` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub name: String,
    /// The arguments object as JSON text (OpenAI's `function.arguments` is a string).
    pub arguments: String,
}

/// The call a finished answer holds, if it is one; its arguments as the model wrote them (as
/// a stream of the same answer delivers them).
pub fn read_call(text: &str, tools: &Tools) -> Option<ToolCall> {
    let (open, close) = tools.markers();
    let body = text.strip_prefix(open)?.strip_suffix(close)?;
    let call: Value = serde_json::from_str(body).ok()?;
    let name = call["name"].as_str()?.to_owned();
    let arguments = call_head(&name)
        .and_then(|head| body.strip_prefix(&head))
        .and_then(|rest| rest.strip_suffix('}'))
        .map_or_else(
            || call.get("arguments").map(Value::to_string),
            |raw| Some(raw.to_owned()),
        )?;
    Some(ToolCall { name, arguments })
}

/// What a call's JSON starts with, up to its arguments (the constraint writes it compactly).
pub fn call_head(name: &str) -> Option<String> {
    Some(format!(
        "{{\"name\": {}, \"arguments\": ",
        serde_json::to_string(name).ok()?
    ))
}

/// The name in a call's JSON once its head is complete: `{"name": "f", "arguments": `.
pub fn name_in_head(text: &str) -> Option<(String, usize)> {
    let rest = text.strip_prefix("{\"name\": ")?;
    let name = serde_json::Deserializer::from_str(rest)
        .into_iter::<String>()
        .next()?
        .ok()?;
    let head = call_head(&name)?;
    text.starts_with(&head).then_some((name, head.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> Value {
        json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
    }

    #[test]
    fn reads_tools_and_the_choice() {
        let tools = Tools::from_request(&json!({"tools": weather()}))
            .unwrap()
            .unwrap();
        assert_eq!(tools.choice, ToolChoice::Auto);
        assert_eq!(tools.functions[0].name, "get_weather");
        let named = json!({"tools": weather(), "tool_choice": {"type": "function", "function": {"name": "get_weather"}}});
        assert_eq!(
            Tools::from_request(&named).unwrap().unwrap().choice,
            ToolChoice::Named("get_weather".into())
        );
        let none = json!({"tools": weather(), "tool_choice": "none"});
        assert_eq!(Tools::from_request(&none).unwrap(), None);
        assert_eq!(Tools::from_request(&json!({})).unwrap(), None);
    }

    #[test]
    fn refuses_what_it_cannot_honour_naming_the_field() {
        let refused = |body: Value| Tools::from_request(&body).unwrap_err().param;
        assert_eq!(
            refused(
                json!({"tools": weather(), "tool_choice": {"type": "function", "function": {"name": "nope"}}})
            ),
            Some("tool_choice.function.name".into())
        );
        assert_eq!(
            refused(json!({"tool_choice": "required"})),
            Some("tool_choice".into())
        );
        assert_eq!(
            refused(json!({"tools": [{"type": "retrieval"}]})),
            Some("tools[0].type".into())
        );
        assert_eq!(
            refused(json!({"tools": [{"type": "function", "function": {"name": "a b"}}]})),
            Some("tools[0].function.name".into())
        );
    }

    #[test]
    fn a_call_is_read_back_from_its_text() {
        let tools = Tools::from_request(&json!({"tools": weather(), "tool_choice": "required"}))
            .unwrap()
            .unwrap();
        let call = read_call(
            r#"{"name": "get_weather", "arguments": {"city": "Paris"}}"#,
            &tools,
        );
        assert_eq!(
            call,
            Some(ToolCall {
                name: "get_weather".into(),
                arguments: r#"{"city": "Paris"}"#.into()
            })
        );
        assert_eq!(
            name_in_head(r#"{"name": "get_weather", "arguments": {"ci"#),
            Some(("get_weather".into(), 37))
        );
        assert_eq!(name_in_head(r#"{"name": "get_wea"#), None);
        let auto = Tools::from_request(&json!({"tools": weather()}))
            .unwrap()
            .unwrap();
        assert!(read_call("Hello there", &auto).is_none());
        assert!(
            read_call(
                r#"<tool_call>{"name": "get_weather", "arguments": {}}</tool_call>"#,
                &auto
            )
            .is_some()
        );
    }
}
