//! Message content: templates as files (`templates/<language>/<kind>.txt`, embedded in the
//! binary), rendered by minijinja. Each file has three blocks: `subject` (e-mail subject),
//! `sms` and `email` (the bodies). A template sees only [`TEMPLATE_FIELDS`]: time, modality,
//! practice, login link, the old time of a moved appointment and until when an offer holds.
//! Loading refuses a template that names any other variable, a field tagged sensitive
//! ([`SENSITIVE_FIELDS`]) above all, and rendering is strict (an unknown variable fails).

use crate::domain::{
    Channel, Facts, Kind, Language, SENSITIVE_FIELDS, TEMPLATE_FIELDS, say_modality, say_time,
};
use minijinja::{Environment, UndefinedBehavior};

/// The template files, by name `<language>/<kind>.txt`.
pub const FILES: [(&str, &str); 21] = [
    ("nb/booked.txt", include_str!("../templates/nb/booked.txt")),
    (
        "nb/rescheduled.txt",
        include_str!("../templates/nb/rescheduled.txt"),
    ),
    (
        "nb/cancelled_by_practice.txt",
        include_str!("../templates/nb/cancelled_by_practice.txt"),
    ),
    (
        "nb/reminder.txt",
        include_str!("../templates/nb/reminder.txt"),
    ),
    (
        "nb/waitlist_offer.txt",
        include_str!("../templates/nb/waitlist_offer.txt"),
    ),
    (
        "nb/consultation_reply.txt",
        include_str!("../templates/nb/consultation_reply.txt"),
    ),
    (
        "nb/video_opening.txt",
        include_str!("../templates/nb/video_opening.txt"),
    ),
    ("nn/booked.txt", include_str!("../templates/nn/booked.txt")),
    (
        "nn/rescheduled.txt",
        include_str!("../templates/nn/rescheduled.txt"),
    ),
    (
        "nn/cancelled_by_practice.txt",
        include_str!("../templates/nn/cancelled_by_practice.txt"),
    ),
    (
        "nn/reminder.txt",
        include_str!("../templates/nn/reminder.txt"),
    ),
    (
        "nn/waitlist_offer.txt",
        include_str!("../templates/nn/waitlist_offer.txt"),
    ),
    (
        "nn/consultation_reply.txt",
        include_str!("../templates/nn/consultation_reply.txt"),
    ),
    (
        "nn/video_opening.txt",
        include_str!("../templates/nn/video_opening.txt"),
    ),
    ("en/booked.txt", include_str!("../templates/en/booked.txt")),
    (
        "en/rescheduled.txt",
        include_str!("../templates/en/rescheduled.txt"),
    ),
    (
        "en/cancelled_by_practice.txt",
        include_str!("../templates/en/cancelled_by_practice.txt"),
    ),
    (
        "en/reminder.txt",
        include_str!("../templates/en/reminder.txt"),
    ),
    (
        "en/waitlist_offer.txt",
        include_str!("../templates/en/waitlist_offer.txt"),
    ),
    (
        "en/consultation_reply.txt",
        include_str!("../templates/en/consultation_reply.txt"),
    ),
    (
        "en/video_opening.txt",
        include_str!("../templates/en/video_opening.txt"),
    ),
];

/// Why a template was refused or did not render.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    /// The template names a field tagged sensitive.
    #[error("template {template} uses {field}, a field tagged sensitive (health information)")]
    Sensitive {
        /// Template name.
        template: String,
        /// The field.
        field: String,
    },
    /// The template names a variable that is not one of the template fields.
    #[error("template {template} uses {field}, which is not a template field")]
    Unknown {
        /// Template name.
        template: String,
        /// The variable.
        field: String,
    },
    /// The template lacks a block or is missing for a kind and language.
    #[error("template {0} is missing or lacks a subject, sms or email block")]
    Missing(String),
    /// minijinja failed.
    #[error("template: {0}")]
    Render(#[from] minijinja::Error),
}

/// A rendered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// E-mail subject (empty for SMS and log).
    pub subject: String,
    /// The text.
    pub body: String,
}

/// The loaded, checked templates.
pub struct Templates {
    env: Environment<'static>,
}

/// Checks one template source: it parses, has the three blocks, and names only template
/// fields (never a sensitive one).
pub fn check(name: &str, source: &str) -> Result<(), ContentError> {
    let mut env = Environment::new();
    env.add_template_owned(name.to_owned(), source.to_owned())?;
    let t = env.get_template(name)?;
    let mut used: Vec<String> = t.undeclared_variables(false).into_iter().collect();
    used.sort();
    for field in used {
        if SENSITIVE_FIELDS.contains(&field.as_str()) {
            return Err(ContentError::Sensitive {
                template: name.to_owned(),
                field,
            });
        }
        if !TEMPLATE_FIELDS.contains(&field.as_str()) {
            return Err(ContentError::Unknown {
                template: name.to_owned(),
                field,
            });
        }
    }
    for block in ["subject", "sms", "email"] {
        if !source.contains(&format!("{{% block {block} %}}")) {
            return Err(ContentError::Missing(name.to_owned()));
        }
    }
    Ok(())
}

impl Templates {
    /// Loads and checks the embedded template files.
    pub fn load() -> Result<Self, ContentError> {
        Self::from_sources(FILES.iter().map(|(n, s)| (n.to_string(), s.to_string())))
    }

    /// Loads and checks templates from `(name, source)` pairs; every kind needs one per
    /// language.
    pub fn from_sources(
        files: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ContentError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        for (name, source) in files {
            check(&name, &source)?;
            env.add_template_owned(name, source)?;
        }
        for lang in [Language::Nb, Language::Nn, Language::En] {
            for kind in Kind::ALL {
                let name = template_name(lang, kind);
                if env.get_template(&name).is_err() {
                    return Err(ContentError::Missing(name));
                }
            }
        }
        Ok(Self { env })
    }

    /// Renders a message of `kind` for `channel` in `lang` from `facts`; `link` is the login
    /// link.
    pub fn render(
        &self,
        kind: Kind,
        channel: Channel,
        lang: Language,
        facts: &Facts,
        link: &str,
    ) -> Result<Rendered, ContentError> {
        let t = self.env.get_template(&template_name(lang, kind))?;
        let say = |ms: Option<i64>| ms.map(|ms| say_time(ms, lang)).unwrap_or_default();
        let link = match &facts.hold_id {
            Some(hold) => format!("{link}?hold={hold}"),
            None => link.to_owned(),
        };
        let ctx = minijinja::context! {
            when => say((facts.start_ms != 0).then_some(facts.start_ms)),
            modality => say_modality(&facts.modality, lang),
            practice => facts.practice.clone(),
            link => link,
            old_when => say(facts.old_start_ms),
            hold_until => say(facts.hold_until_ms),
        };
        let mut captured = t.render_captured(ctx)?;
        let mut block = |name: &str| -> Result<String, ContentError> {
            Ok(captured
                .with_state_mut(|state| state.render_block(name))?
                .trim()
                .to_owned())
        };
        Ok(match channel {
            Channel::Email => Rendered {
                subject: block("subject")?,
                body: block("email")?,
            },
            Channel::Sms | Channel::Log => Rendered {
                subject: String::new(),
                body: block("sms")?,
            },
        })
    }
}

/// `<language>/<kind>.txt`.
pub fn template_name(lang: Language, kind: Kind) -> String {
    format!("{}/{}.txt", lang.as_str(), kind.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            start_ms: 1_772_434_800_000, // 2026-03-02 08:00 Oslo
            modality: "video".into(),
            practice: "Dr Hansen".into(),
            old_start_ms: Some(1_772_434_800_000),
            hold_id: Some("h1".into()),
            hold_until_ms: Some(1_772_434_800_000),
        }
    }

    #[test]
    fn every_template_file_loads_and_uses_only_template_fields() {
        let t = Templates::load().expect("templates load");
        for lang in [Language::Nb, Language::Nn, Language::En] {
            for kind in Kind::ALL {
                for ch in [Channel::Sms, Channel::Email] {
                    let r = t
                        .render(kind, ch, lang, &facts(), "https://x.example/login")
                        .expect("render");
                    assert!(!r.body.is_empty(), "{kind:?} {lang:?}");
                    assert!(
                        r.body.contains("https://x.example/login"),
                        "{kind:?} {lang:?} has the link"
                    );
                }
            }
        }
    }

    #[test]
    fn a_template_naming_a_sensitive_field_is_refused() {
        for field in SENSITIVE_FIELDS {
            let src = format!(
                "{{% block subject %}}x{{% endblock %}}{{% block sms %}}{{{{ when }}}} {{{{ {field} }}}}{{% endblock %}}{{% block email %}}x{{% endblock %}}"
            );
            let err = check("nb/booked.txt", &src).expect_err(field);
            assert!(
                matches!(err, ContentError::Sensitive { .. }),
                "{field}: {err}"
            );
            // Also inside an expression or an attribute.
            let src = format!(
                "{{% block subject %}}{{% if {field} %}}x{{% endif %}}{{% endblock %}}{{% block sms %}}{{% endblock %}}{{% block email %}}{{% endblock %}}"
            );
            assert!(
                matches!(check("t", &src), Err(ContentError::Sensitive { .. })),
                "{field}"
            );
        }
        // The set of embedded files with one sensitive field slipped in does not load.
        let files = FILES.iter().map(|(n, s)| {
            let s = if *n == "nb/booked.txt" {
                s.replace("{{ when }}", "{{ when }} ({{ reason }})")
            } else {
                s.to_string()
            };
            (n.to_string(), s)
        });
        assert!(matches!(
            Templates::from_sources(files),
            Err(ContentError::Sensitive { .. })
        ));
    }

    #[test]
    fn a_template_naming_an_unknown_variable_is_refused() {
        let src = "{% block subject %}{% endblock %}{% block sms %}{{ diagnosis }}{% endblock %}{% block email %}{% endblock %}";
        assert!(matches!(check("t", src), Err(ContentError::Unknown { .. })));
    }

    #[test]
    fn the_bokmal_confirmation_says_time_modality_practice_and_link() {
        let t = Templates::load().expect("templates");
        let r = t
            .render(
                Kind::Booked,
                Channel::Sms,
                Language::Nb,
                &facts(),
                "https://x.example/login",
            )
            .expect("render");
        assert!(r.body.contains("mandag 2. mars kl. 08:00"), "{}", r.body);
        assert!(r.body.contains("videokonsultasjon"), "{}", r.body);
        assert!(r.body.contains("Dr Hansen"), "{}", r.body);
    }

    #[test]
    fn an_offer_says_until_when_it_holds() {
        let t = Templates::load().expect("templates");
        let mut f = facts();
        f.hold_until_ms = Some(f.start_ms - 3_600_000);
        let r = t
            .render(
                Kind::WaitlistOffer,
                Channel::Sms,
                Language::En,
                &f,
                "https://x.example/login",
            )
            .expect("render");
        assert!(r.body.contains("Monday 2 March at 07:00"), "{}", r.body);
        assert!(r.body.contains("hold=h1"), "{}", r.body);
    }
}
