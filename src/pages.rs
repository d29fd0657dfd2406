//! Every HTML page the service shows a person, and the one escape function that everything
//! reflected into a page goes through.

/// Escapes the five characters that matter in HTML text and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            c => out.push(c),
        }
    }
    out
}

/// A small self-contained page. `title` and `heading` are ours; `paragraphs` are escaped here.
pub fn page(title: &str, heading: &str, paragraphs: &[String], ok: bool) -> String {
    page_in("en", title, heading, paragraphs, ok)
}

/// `page` in a language (`lang` is our own constant, `en` or `pt-BR`).
pub fn page_in(lang: &str, title: &str, heading: &str, paragraphs: &[String], ok: bool) -> String {
    page_with_link(lang, title, heading, paragraphs, ok, None)
}

/// A plain link a person may follow: never followed for them (no script, no refresh), and
/// opened without a referrer or a handle on this page.
pub struct Link<'a> {
    /// An absolute URL the caller checked; escaped here as an attribute value.
    pub href: &'a str,
    /// Escaped here.
    pub text: &'a str,
}

/// `page_in` with a link after the paragraphs.
pub fn page_with_link(
    lang: &str,
    title: &str,
    heading: &str,
    paragraphs: &[String],
    ok: bool,
    link: Option<Link>,
) -> String {
    let accent = if ok { "#1a7f37" } else { "#b42318" };
    let mut body: String = paragraphs
        .iter()
        .map(|p| format!("<p>{}</p>", escape(p)))
        .collect();
    if let Some(link) = link {
        body.push_str(&format!(
            "<p class=\"back\"><a href=\"{}\" rel=\"noopener noreferrer\">{}</a></p>",
            escape(link.href),
            escape(link.text)
        ));
    }
    format!(
        "<!DOCTYPE html>\n<html lang=\"{lang}\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title}</title><style>\
body{{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;padding:0 1rem;background:#f6f8fa;color:#1f2328}}\
main{{max-width:32rem;margin:12vh auto;padding:2rem;background:#fff;border-radius:12px;box-shadow:0 1px 3px rgba(0,0,0,.12)}}\
h1{{font-size:1.4rem;color:{accent};margin-top:0}}p{{line-height:1.5}}\
.back a{{display:inline-block;padding:.5rem 1rem;border-radius:6px;background:#0969da;color:#fff;text-decoration:none}}</style></head>\
<body><main><h1>{heading}</h1>{body}</main></body></html>\n",
        lang = escape(lang),
        title = escape(title),
        heading = escape(heading),
    )
}

/// Rendered once: it is the page every successful relay callback shows.
pub fn relay_success() -> bytes::Bytes {
    static PAGE: std::sync::OnceLock<bytes::Bytes> = std::sync::OnceLock::new();
    PAGE.get_or_init(|| {
        page(
            "Authentication Successful",
            "Authentication Successful",
            &["You can close this window and return to the application.".into()],
            true,
        )
        .into()
    })
    .clone()
}

pub fn relay_failure(error: Option<&str>, description: Option<&str>) -> String {
    let mut paragraphs = vec!["The sign-in was not completed.".to_string()];
    if let Some(e) = error {
        paragraphs.push(format!("Error: {e}"));
    }
    if let Some(d) = description {
        paragraphs.push(format!("Details: {d}"));
    }
    paragraphs.push("You can close this window and try again from the application.".into());
    page(
        "Authentication Failed",
        "Authentication Failed",
        &paragraphs,
        false,
    )
}

pub fn not_found() -> String {
    page(
        "404 - Not Found",
        "404 - Not Found",
        &["There is nothing at this address.".into()],
        false,
    )
}

/// A failure page for a person, with one sentence on what happened and what to do.
pub fn problem(heading: &str, explanation: &str) -> String {
    page(heading, heading, &[explanation.to_string()], false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_the_five() {
        assert_eq!(
            escape(r#"<script>alert("x")&'</script>"#),
            "&lt;script&gt;alert(&quot;x&quot;)&amp;&#x27;&lt;/script&gt;"
        );
    }

    #[test]
    fn links_are_escaped_and_plain() {
        let html = page_with_link(
            "en",
            "t",
            "t",
            &[],
            true,
            Some(Link {
                href: "https://chat.example.com/?a=1&b=\"><script>",
                text: "Back to <chat>",
            }),
        );
        assert!(html.contains(
            "<a href=\"https://chat.example.com/?a=1&amp;b=&quot;&gt;&lt;script&gt;\" \
             rel=\"noopener noreferrer\">Back to &lt;chat&gt;</a>"
        ));
        assert!(!html.contains("<script"));
        assert!(!page_in("en", "t", "t", &[], true).contains("<a "));
    }

    #[test]
    fn failure_page_escapes_provider_text() {
        let html = relay_failure(Some("<b>"), Some("<img src=x onerror=alert(1)>"));
        assert!(html.contains("Authentication Failed"));
        assert!(!html.contains("<img"));
        assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"));
    }
}
