//! Chat templates: a conversation rendered into the one prompt string that
//! TGI's `/generate` and the Inference API's text-generation task take.
//!
//! Five families are built in, each written out by hand after the model's
//! official template (BOS token included, system text where the family puts
//! it); any other model's `chat_template` from its `tokenizer_config.json` is
//! rendered with MiniJinja, set up the way Hugging Face renders it (blocks
//! trimmed, `raise_exception`, loop controls, `tojson`, Python string and
//! dict methods).

use std::fmt;

use minijinja::{Environment, ErrorKind, context};

/// Who speaks in one turn, in the template's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaker {
    System,
    User,
    Assistant,
}

/// One message of the conversation, as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    pub role: Speaker,
    pub content: String,
}

impl Turn {
    /// `{"role": …, "content": …}` as a template sees a message.
    fn value(&self) -> minijinja::Value {
        minijinja::Value::from_pairs([
            ("role", minijinja::Value::from(role(self.role))),
            ("content", minijinja::Value::from(self.content.as_str())),
        ])
    }
}

/// The built-in families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama2,
    Llama3,
    ChatMl,
    Gemma,
    Mistral,
}

impl Family {
    pub fn named(name: &str) -> Option<Family> {
        Some(match name {
            "llama2" => Family::Llama2,
            "llama3" => Family::Llama3,
            "chatml" => Family::ChatMl,
            "gemma" => Family::Gemma,
            "mistral" => Family::Mistral,
            _ => return None,
        })
    }

    /// The beginning-of-sequence token the family's template writes.
    pub fn bos(self) -> &'static str {
        match self {
            Family::Llama2 | Family::Mistral => "<s>",
            Family::Llama3 => "<|begin_of_text|>",
            Family::Gemma => "<bos>",
            Family::ChatMl => "",
        }
    }

    /// Texts that end the assistant's turn, to add to the stop list.
    pub fn stops(self) -> &'static [&'static str] {
        match self {
            Family::Llama2 | Family::Mistral => &["</s>"],
            Family::Llama3 => &["<|eot_id|>"],
            Family::ChatMl => &["<|im_end|>", "<|endoftext|>"],
            Family::Gemma => &["<end_of_turn>"],
        }
    }
}

/// A configured chat template.
pub enum Template {
    Builtin {
        family: Family,
        /// The BOS text written (the family's own unless configured).
        bos: String,
    },
    Jinja {
        env: Box<Environment<'static>>,
        bos: String,
        eos: String,
    },
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Template::Builtin { family, bos } => f
                .debug_struct("Builtin")
                .field("family", family)
                .field("bos", bos)
                .finish(),
            Template::Jinja { bos, eos, .. } => f
                .debug_struct("Jinja")
                .field("bos", bos)
                .field("eos", eos)
                .finish_non_exhaustive(),
        }
    }
}

const NAME: &str = "chat_template";

impl Template {
    /// A built-in family, with its own BOS unless `bos` is given.
    pub fn builtin(family: Family, bos: Option<String>) -> Template {
        Template::Builtin {
            family,
            bos: bos.unwrap_or_else(|| family.bos().to_owned()),
        }
    }

    /// Compiles a Jinja chat template; the error says what is wrong with it.
    pub fn jinja(
        source: &str,
        bos: Option<String>,
        eos: Option<String>,
    ) -> Result<Template, String> {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(|e| e.to_string())?,
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(NAME, source.to_owned())
            .map_err(|e| describe(&e))?;
        Ok(Template::Jinja {
            env: Box::new(env),
            bos: bos.unwrap_or_default(),
            eos: eos.unwrap_or_default(),
        })
    }

    /// Whether `text` looks like a Jinja template rather than a family name.
    pub fn is_jinja(text: &str) -> bool {
        text.contains("{{") || text.contains("{%")
    }

    /// Texts that end the assistant's turn: the family's markers, or the
    /// configured EOS token of a Jinja template.
    pub fn stops(&self) -> Vec<&str> {
        match self {
            Template::Builtin { family, .. } => family.stops().to_vec(),
            Template::Jinja { eos, .. } if !eos.is_empty() => vec![eos.as_str()],
            Template::Jinja { .. } => Vec::new(),
        }
    }

    /// The prompt for `turns`, ending with the generation prompt. An error is
    /// a conversation the template does not accept, worded for the client.
    pub fn render(&self, turns: &[Turn]) -> Result<String, String> {
        match self {
            Template::Builtin { family, bos } => match family {
                Family::Llama2 => llama2(turns, bos),
                Family::Llama3 => Ok(llama3(turns, bos)),
                Family::ChatMl => Ok(chatml(turns, bos)),
                Family::Gemma => gemma(turns, bos),
                Family::Mistral => mistral(turns, bos),
            },
            Template::Jinja { env, bos, eos } => {
                let template = env.get_template(NAME).map_err(|e| describe(&e))?;
                template
                    .render(context! {
                        messages => turns.iter().map(Turn::value).collect::<Vec<_>>(),
                        bos_token => bos,
                        eos_token => eos,
                        add_generation_prompt => true,
                    })
                    .map_err(|e| describe(&e))
            }
        }
    }
}

fn raise_exception(message: String) -> Result<String, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// The error's own words (a template's `raise_exception` message as written).
fn describe(e: &minijinja::Error) -> String {
    match (e.kind(), e.detail()) {
        (ErrorKind::InvalidOperation, Some(detail)) => detail.to_owned(),
        _ => e.to_string(),
    }
}

// === the built-in families ===

/// Leading system turns joined by blank lines, and the rest. A system turn
/// after the first user or assistant turn has nowhere to go in families
/// without a system role.
fn split_system<'t>(
    turns: &'t [Turn],
    family: &str,
) -> Result<(Option<String>, &'t [Turn]), String> {
    let leading = turns
        .iter()
        .take_while(|t| t.role == Speaker::System)
        .count();
    let (system, rest) = turns.split_at(leading);
    if rest.iter().any(|t| t.role == Speaker::System) {
        return Err(format!(
            "the {family} chat template takes system messages only at the start of the conversation"
        ));
    }
    let system = (!system.is_empty()).then(|| {
        system
            .iter()
            .map(|t| t.content.as_str())
            .collect::<Vec<_>>()
            .join("\n\n")
    });
    Ok((system, rest))
}

/// Checks that `turns` go user, assistant, user, … starting with the user.
fn alternate(turns: &[Turn], family: &str) -> Result<(), String> {
    for (i, t) in turns.iter().enumerate() {
        let expected = if i % 2 == 0 {
            Speaker::User
        } else {
            Speaker::Assistant
        };
        if t.role != expected {
            return Err(format!(
                "the {family} chat template needs user and assistant messages to alternate, starting with the user"
            ));
        }
    }
    Ok(())
}

/// `<s>[INST] <<SYS>>\n{sys}\n<</SYS>>\n\n{u1} [/INST] {a1} </s><s>[INST] {u2} [/INST]`
fn llama2(turns: &[Turn], bos: &str) -> Result<String, String> {
    let (system, rest) = split_system(turns, "llama2")?;
    alternate(rest, "llama2")?;
    let mut out = String::new();
    for (i, t) in rest.iter().enumerate() {
        match t.role {
            Speaker::User => {
                let content = match (&system, i) {
                    (Some(sys), 0) => format!("<<SYS>>\n{sys}\n<</SYS>>\n\n{}", t.content),
                    _ => t.content.clone(),
                };
                out.push_str(bos);
                out.push_str("[INST] ");
                out.push_str(content.trim());
                out.push_str(" [/INST]");
            }
            _ => {
                out.push(' ');
                out.push_str(t.content.trim());
                out.push_str(" </s>");
            }
        }
    }
    Ok(out)
}

/// `<|begin_of_text|>` then `<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>` per message.
fn llama3(turns: &[Turn], bos: &str) -> String {
    let mut out = String::from(bos);
    for t in turns {
        out.push_str("<|start_header_id|>");
        out.push_str(role(t.role));
        out.push_str("<|end_header_id|>\n\n");
        out.push_str(t.content.trim());
        out.push_str("<|eot_id|>");
    }
    out.push_str("<|start_header_id|>assistant<|end_header_id|>\n\n");
    out
}

/// `<|im_start|>{role}\n{content}<|im_end|>\n` per message, content as sent.
fn chatml(turns: &[Turn], bos: &str) -> String {
    let mut out = String::from(bos);
    for t in turns {
        out.push_str("<|im_start|>");
        out.push_str(role(t.role));
        out.push('\n');
        out.push_str(&t.content);
        out.push_str("<|im_end|>\n");
    }
    out.push_str("<|im_start|>assistant\n");
    out
}

/// `<bos>` then `<start_of_turn>{user|model}\n{content}<end_of_turn>\n`;
/// system text opens the first user turn.
fn gemma(turns: &[Turn], bos: &str) -> Result<String, String> {
    let (system, rest) = split_system(turns, "gemma")?;
    alternate(rest, "gemma")?;
    let mut out = String::from(bos);
    for (i, t) in rest.iter().enumerate() {
        let content = match (&system, i) {
            (Some(sys), 0) => format!("{sys}\n\n{}", t.content),
            _ => t.content.clone(),
        };
        out.push_str("<start_of_turn>");
        out.push_str(if t.role == Speaker::User {
            "user"
        } else {
            "model"
        });
        out.push('\n');
        out.push_str(content.trim());
        out.push_str("<end_of_turn>\n");
    }
    out.push_str("<start_of_turn>model\n");
    Ok(out)
}

/// `<s>[INST] {sys}\n\n{u1} [/INST]{a1}</s>[INST] {u2} [/INST]`
fn mistral(turns: &[Turn], bos: &str) -> Result<String, String> {
    let (system, rest) = split_system(turns, "mistral")?;
    alternate(rest, "mistral")?;
    let mut out = String::from(bos);
    for (i, t) in rest.iter().enumerate() {
        match t.role {
            Speaker::User => {
                out.push_str("[INST] ");
                if let (Some(sys), 0) = (&system, i) {
                    out.push_str(sys);
                    out.push_str("\n\n");
                }
                out.push_str(&t.content);
                out.push_str(" [/INST]");
            }
            _ => {
                out.push_str(&t.content);
                out.push_str("</s>");
            }
        }
    }
    Ok(out)
}

fn role(speaker: Speaker) -> &'static str {
    match speaker {
        Speaker::System => "system",
        Speaker::User => "user",
        Speaker::Assistant => "assistant",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(role: Speaker, content: &str) -> Turn {
        Turn {
            role,
            content: content.to_owned(),
        }
    }

    /// sys, u1, a1, u2, the conversation every rendering of the reference shows.
    fn conversation() -> Vec<Turn> {
        vec![
            turn(Speaker::System, "{sys}"),
            turn(Speaker::User, "{u1}"),
            turn(Speaker::Assistant, "{a1}"),
            turn(Speaker::User, "{u2}"),
        ]
    }

    fn render(name: &str, turns: &[Turn]) -> Result<String, String> {
        Template::builtin(Family::named(name).unwrap(), None).render(turns)
    }

    #[test]
    fn every_family_renders_as_its_official_template() {
        let cases: &[(&str, &str)] = &[
            (
                "llama2",
                "<s>[INST] <<SYS>>\n{sys}\n<</SYS>>\n\n{u1} [/INST] {a1} </s><s>[INST] {u2} [/INST]",
            ),
            (
                "llama3",
                "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{sys}<|eot_id|>\
                 <|start_header_id|>user<|end_header_id|>\n\n{u1}<|eot_id|>\
                 <|start_header_id|>assistant<|end_header_id|>\n\n{a1}<|eot_id|>\
                 <|start_header_id|>user<|end_header_id|>\n\n{u2}<|eot_id|>\
                 <|start_header_id|>assistant<|end_header_id|>\n\n",
            ),
            (
                "chatml",
                "<|im_start|>system\n{sys}<|im_end|>\n<|im_start|>user\n{u1}<|im_end|>\n\
                 <|im_start|>assistant\n{a1}<|im_end|>\n<|im_start|>user\n{u2}<|im_end|>\n\
                 <|im_start|>assistant\n",
            ),
            (
                "gemma",
                "<bos><start_of_turn>user\n{sys}\n\n{u1}<end_of_turn>\n<start_of_turn>model\n{a1}<end_of_turn>\n\
                 <start_of_turn>user\n{u2}<end_of_turn>\n<start_of_turn>model\n",
            ),
            (
                "mistral",
                "<s>[INST] {sys}\n\n{u1} [/INST]{a1}</s>[INST] {u2} [/INST]",
            ),
        ];
        for (name, expected) in cases {
            assert_eq!(render(name, &conversation()).unwrap(), *expected, "{name}");
        }
    }

    #[test]
    fn without_a_system_message() {
        let turns = [turn(Speaker::User, "  Hi \n")];
        assert_eq!(render("llama2", &turns).unwrap(), "<s>[INST] Hi [/INST]");
        assert_eq!(
            render("gemma", &turns).unwrap(),
            "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
        );
        assert_eq!(
            render("chatml", &turns).unwrap(),
            "<|im_start|>user\n  Hi \n<|im_end|>\n<|im_start|>assistant\n",
            "ChatML keeps content as sent"
        );
        assert_eq!(
            render("mistral", &turns).unwrap(),
            "<s>[INST]   Hi \n [/INST]"
        );
    }

    #[test]
    fn families_without_a_system_role_refuse_what_they_cannot_place() {
        let late_system = [
            turn(Speaker::User, "a"),
            turn(Speaker::System, "b"),
            turn(Speaker::User, "c"),
        ];
        for name in ["llama2", "gemma", "mistral"] {
            assert!(render(name, &late_system).is_err(), "{name}");
            let two_users = [turn(Speaker::User, "a"), turn(Speaker::User, "b")];
            let err = render(name, &two_users).unwrap_err();
            assert!(err.contains("alternate"), "{err}");
        }
        assert!(render("llama3", &late_system).is_ok());
        let two_systems = [
            turn(Speaker::System, "one"),
            turn(Speaker::System, "two"),
            turn(Speaker::User, "u"),
        ];
        assert_eq!(
            render("llama2", &two_systems).unwrap(),
            "<s>[INST] <<SYS>>\none\n\ntwo\n<</SYS>>\n\nu [/INST]"
        );
    }

    #[test]
    fn a_configured_bos_replaces_the_familys() {
        let t = Template::builtin(Family::Llama3, Some(String::new()));
        let out = t.render(&[turn(Speaker::User, "x")]).unwrap();
        assert!(out.starts_with("<|start_header_id|>user"), "{out}");
        assert_eq!(t.stops(), ["<|eot_id|>"]);
    }

    /// Zephyr's template as shipped in its tokenizer_config.json.
    const ZEPHYR: &str = "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}";

    #[test]
    fn jinja_templates_render_as_hugging_face_renders_them() {
        let t = Template::jinja(ZEPHYR, None, Some("</s>".into())).unwrap();
        let out = t
            .render(&[
                turn(Speaker::System, "Be brief."),
                turn(Speaker::User, "Hi"),
            ])
            .unwrap();
        assert_eq!(
            out, "<|system|>\nBe brief.</s>\n<|user|>\nHi</s>\n<|assistant|>\n",
            "trim_blocks eats the newline after a block tag, not after an expression"
        );
        assert_eq!(t.stops(), ["</s>"]);
    }

    /// Mistral's official template: raise_exception, namespace-free loop
    /// index checks and Python string methods.
    const MISTRAL_OFFICIAL: &str = "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'].strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'].strip() + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";

    #[test]
    fn jinja_raise_exception_and_python_methods() {
        let t = Template::jinja(MISTRAL_OFFICIAL, Some("<s>".into()), Some("</s>".into())).unwrap();
        let out = t
            .render(&[
                turn(Speaker::User, " a "),
                turn(Speaker::Assistant, "b"),
                turn(Speaker::User, "c"),
            ])
            .unwrap();
        assert_eq!(out, "<s>[INST] a [/INST]b</s>[INST] c [/INST]");
        let err = t.render(&[turn(Speaker::System, "s")]).unwrap_err();
        assert_eq!(
            err,
            "Conversation roles must alternate user/assistant/user/assistant/..."
        );
    }

    #[test]
    fn jinja_loop_controls_and_tojson() {
        let source = "{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}{{ m | tojson }}{% if loop.index > 2 %}{% break %}{% endif %}{% endfor %}";
        let t = Template::jinja(source, None, None).unwrap();
        let out = t
            .render(&[turn(Speaker::System, "s"), turn(Speaker::User, "u")])
            .unwrap();
        assert_eq!(out, r#"{"role": "user", "content": "u"}"#);
        assert!(t.stops().is_empty());
    }

    #[test]
    fn broken_templates_are_reported() {
        let err = Template::jinja("{% for m in messages %}", None, None).unwrap_err();
        assert!(
            err.contains("endfor") || err.contains("end of input"),
            "{err}"
        );
        assert!(Template::is_jinja("{{ bos_token }}"));
        assert!(!Template::is_jinja("llama3"));
        assert_eq!(Family::named("llama4"), None);
    }
}
