//! Chat templates: the model's own Jinja template (from its GGUF metadata), rendered by
//! minijinja the way Hugging Face's `apply_chat_template` renders it.

use minijinja::{Environment, Error, ErrorKind, context};
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct TemplateMessage {
    pub role: String,
    pub content: String,
}

#[derive(Debug)]
pub struct ChatTemplate {
    environment: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("the model's chat template does not parse: {0}")]
    Invalid(String),
    #[error("the chat template refused the messages: {0}")]
    Render(String),
}

impl ChatTemplate {
    pub fn new(
        source: &str,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<ChatTemplate, TemplateError> {
        let mut environment = Environment::new();
        // Templates written for Python's Jinja call these; minijinja's Python-compatible methods
        // (`.strip()`, `.startswith()`…) come from the pycompat callback.
        environment.set_unknown_method_callback(minijinja_contrib_pycompat);
        environment.add_function(
            "raise_exception",
            |message: String| -> Result<String, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        environment.set_trim_blocks(true);
        environment.set_lstrip_blocks(true);
        environment
            .add_template_owned("chat", source.to_owned())
            .map_err(|error| TemplateError::Invalid(error.to_string()))?;
        Ok(ChatTemplate {
            environment,
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
        })
    }

    /// The prompt text for `messages`, ending with the assistant's turn opened.
    pub fn render(&self, messages: &[TemplateMessage]) -> Result<String, TemplateError> {
        let template = self
            .environment
            .get_template("chat")
            .map_err(|error| TemplateError::Invalid(error.to_string()))?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            })
            .map_err(|error| TemplateError::Render(error.to_string()))
    }
}

/// The few Python string methods chat templates use, for values minijinja does not know them on.
fn minijinja_contrib_pycompat(
    _state: &minijinja::State,
    value: &minijinja::Value,
    method: &str,
    args: &[minijinja::Value],
) -> Result<minijinja::Value, Error> {
    let Some(text) = value.as_str() else {
        return Err(Error::new(
            ErrorKind::UnknownMethod,
            format!("no method {method}"),
        ));
    };
    let argument = |index: usize| {
        args.get(index)
            .and_then(|arg| arg.as_str())
            .unwrap_or_default()
    };
    Ok(match method {
        "strip" => text.trim().into(),
        "lstrip" => text.trim_start().into(),
        "rstrip" => text.trim_end().into(),
        "startswith" => text.starts_with(argument(0)).into(),
        "endswith" => text.ends_with(argument(0)).into(),
        "upper" => text.to_uppercase().into(),
        "lower" => text.to_lowercase().into(),
        // Python's `split()` without an argument splits on runs of whitespace.
        "split" if argument(0).is_empty() => text
            .split_whitespace()
            .map(minijinja::Value::from)
            .collect::<Vec<_>>()
            .into(),
        "split" => text
            .split(argument(0))
            .map(minijinja::Value::from)
            .collect::<Vec<_>>()
            .into(),
        _ => {
            return Err(Error::new(
                ErrorKind::UnknownMethod,
                format!("no method {method} on a string"),
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    fn message(role: &str, content: &str) -> TemplateMessage {
        TemplateMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    #[test]
    fn renders_smollm2_chatml_like_transformers() {
        let template = ChatTemplate::new(CHATML, "<|im_start|>", "<|im_end|>").unwrap();
        let rendered = template.render(&[message("user", "Hi")]).unwrap();
        assert_eq!(
            rendered,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let with_system = template
            .render(&[message("system", "Be brief."), message("user", "Hi")])
            .unwrap();
        assert!(with_system.starts_with("<|im_start|>system\nBe brief.<|im_end|>\n"));
    }

    #[test]
    fn templates_may_raise_and_use_python_methods() {
        let source = "{% if messages[0]['role'] == 'tool' %}{{ raise_exception('no tools') }}{% endif %}{{ messages[0]['content'].strip() }}";
        let template = ChatTemplate::new(source, "", "").unwrap();
        assert_eq!(template.render(&[message("user", "  x  ")]).unwrap(), "x");
        assert!(matches!(
            template.render(&[message("tool", "x")]),
            Err(TemplateError::Render(_))
        ));
        assert!(matches!(
            ChatTemplate::new("{% if %}", "", ""),
            Err(TemplateError::Invalid(_))
        ));
    }
}
