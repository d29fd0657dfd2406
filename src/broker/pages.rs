//! What the broker tells a person, in English and Brazilian Portuguese, chosen by
//! `Accept-Language`. Pages name the provider by its display name ("<name> connected", and
//! "(read-only)" for read-only providers) and never show tokens, codes, state values or
//! provider error text: each failure reason maps to a fixed, kind sentence and what to do next.
//! In Portuguese the provider follows "conta" ("a conta <name>"), which needs no article of its
//! own.

use super::return_url::ReturnUrl;
use crate::error::Reason;
use crate::http::Response;
use crate::pages::{page_in, page_with_link, Link};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lang {
    En,
    PtBr,
}

impl Lang {
    /// The first supported language in the header's preference order (q-values honoured);
    /// English when none is.
    pub fn from_accept_language(header: Option<&str>) -> Lang {
        let mut prefs: Vec<(f32, usize, &str)> = header
            .unwrap_or("")
            .split(',')
            .enumerate()
            .filter_map(|(i, part)| {
                let mut bits = part.split(';');
                let tag = bits.next()?.trim();
                let q = bits
                    .find_map(|b| b.trim().strip_prefix("q="))
                    .and_then(|q| q.parse().ok())
                    .unwrap_or(1.0);
                (!tag.is_empty() && q > 0.0).then_some((q, i, tag))
            })
            .collect();
        prefs.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, _, tag) in prefs {
            let tag = tag.to_ascii_lowercase();
            if tag == "pt" || tag.starts_with("pt-") {
                return Lang::PtBr;
            }
            if tag == "en" || tag.starts_with("en-") {
                return Lang::En;
            }
        }
        Lang::En
    }

    fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::PtBr => "pt-BR",
        }
    }
}

/// "<display name> connected", and "(read-only)" for providers that grant read access only.
/// With the session's return URL (checked against the operator's origins), a plain link back to
/// it: "Back to <host>". Only here: failure pages tell the person to ask for a new link, and the
/// pages of unknown or expired links have no session to link to.
pub fn success(lang: Lang, display: &str, read_only: bool, back: Option<&ReturnUrl>) -> Response {
    let d = display;
    let (title, text) = match (lang, read_only) {
        (Lang::En, true) => (
            format!("{d} connected (read-only)"),
            format!("Your {d} account is connected. The assistant can read what you allowed; it cannot send, change or delete anything. You can close this window and go back to the chat."),
        ),
        (Lang::En, false) => (
            format!("{d} connected"),
            format!("Your {d} account is connected. You can close this window and go back to the chat."),
        ),
        (Lang::PtBr, true) => (
            format!("{d} conectado (somente leitura)"),
            format!("Sua conta {d} está conectada. O assistente pode ler o que você permitiu; ele não pode enviar, alterar nem apagar nada. Você já pode fechar esta janela e voltar para a conversa."),
        ),
        (Lang::PtBr, false) => (
            format!("{d} conectado"),
            format!("Sua conta {d} está conectada. Você já pode fechar esta janela e voltar para a conversa."),
        ),
    };
    let link_text = back.map(|b| match lang {
        Lang::En => format!("Back to {}", b.host),
        Lang::PtBr => format!("Voltar para {}", b.host),
    });
    let link = back
        .zip(link_text.as_deref())
        .map(|(b, text)| Link { href: &b.url, text });
    Response::html(
        200,
        page_with_link(lang.code(), &title, &title, &[text], true, link),
    )
    .with_header("Content-Language", lang.code())
}

/// The page for a failure reason, with the reason's HTTP status (chosen in `error.rs`). The
/// match is exhaustive: a new shared reason needs its words here (a provider kind's own reason
/// carries them). `display` names the provider; the reasons that can arise before a provider is
/// known (an unknown link or state) do not use it.
pub fn failure(lang: Lang, reason: Reason, display: &str) -> Response {
    let d = display;
    let (en, pt): ([String; 2], [String; 2]) = match reason {
        Reason::AccessDenied => (
            ["Sign-in cancelled".into(), format!("You cancelled the {d} sign-in, so nothing was connected. If that was not what you wanted, ask the assistant for a new link.")],
            ["Login cancelado".into(), format!("Você cancelou o login da conta {d}, então nada foi conectado. Se não era isso que você queria, peça um novo link ao assistente.")]),
        Reason::EmailMismatch | Reason::SubjectMismatch => (
            ["A different account was used".into(), format!("You signed in with a different {d} account than the one this link is for, so nothing was connected. Ask the assistant for a new link and sign in with the right account.")],
            ["Outra conta foi usada".into(), format!("Você entrou com uma conta {d} diferente daquela para a qual este link foi criado, então nada foi conectado. Peça um novo link ao assistente e entre com a conta certa.")]),
        Reason::EmailUnverified => (
            ["This account's e-mail address is not verified".into(), format!("The {d} account you signed in with has the right e-mail address, but {d} does not confirm that the address belongs to it, so nothing was connected. Verify the address first, then ask the assistant for a new link.")],
            ["O e-mail desta conta não foi verificado".into(), format!("A conta {d} com que você entrou tem o e-mail certo, mas não há confirmação de que o endereço pertence a ela, então nada foi conectado. Verifique o endereço primeiro e depois peça um novo link ao assistente.")]),
        Reason::LinkUnknown | Reason::StateUnknown | Reason::StateMissing => (
            ["This link is not valid".into(), "This sign-in link is incomplete or unknown. Ask the assistant for a new link.".into()],
            ["Este link não é válido".into(), "Este link de login está incompleto ou é desconhecido. Peça um novo link ao assistente.".into()]),
        Reason::LinkExpired | Reason::StateExpired => (
            ["This link has expired".into(), "Sign-in links work for a few minutes only. Ask the assistant for a new link.".into()],
            ["Este link expirou".into(), "Os links de login valem só por alguns minutos. Peça um novo link ao assistente.".into()]),
        Reason::AlreadyConnected => (
            ["Already connected".into(), "This sign-in is already complete. You can close this window and go back to the chat.".into()],
            ["Já conectado".into(), "Este login já foi concluído. Você já pode fechar esta janela e voltar para a conversa.".into()]),
        Reason::StateReused | Reason::LinkUsed => (
            ["This link was already used".into(), "This sign-in link has already been used. If you still need to connect, ask the assistant for a new link.".into()],
            ["Este link já foi usado".into(), "Este link de login já foi usado. Se ainda precisar conectar, peça um novo link ao assistente.".into()]),
        Reason::BrowserMismatch => (
            ["Open the link again in this browser".into(), format!("This {d} sign-in was started in another browser, or this browser no longer has its sign-in cookie, so nothing was connected. Open the sign-in link again in this same browser and sign in from here.")],
            ["Abra o link de novo neste navegador".into(), format!("Este login da conta {d} foi iniciado em outro navegador, ou este navegador não tem mais o cookie do login, então nada foi conectado. Abra o link de login de novo neste mesmo navegador e entre por aqui.")]),
        Reason::Unavailable => (
            ["Please try again in a minute".into(), "The sign-in service is busy right now. Wait a minute and open the link again.".into()],
            ["Tente de novo em um minuto".into(), "O serviço de login está ocupado agora. Espere um minuto e abra o link de novo.".into()]),
        Reason::ProviderError
        | Reason::IssuerMismatch
        | Reason::ExchangeFailed
        | Reason::NoRefreshToken
        | Reason::IdTokenInvalid
        | Reason::ProfileFailed => (
            ["We could not connect your account".into(), format!("The {d} sign-in did not complete, so nothing was connected. Ask the assistant for a new link; if it happens again, tell the person who sent it.")],
            ["Não foi possível conectar sua conta".into(), format!("O login da conta {d} não foi concluído, então nada foi conectado. Peça um novo link ao assistente; se acontecer de novo, avise quem enviou o link.")]),
        // A provider kind's own reason brings its words (its file says them).
        Reason::Own(own) => {
            let fill = |[title, text]: [&str; 2]| {
                [title, text].map(|w| w.replace("{provider}", d))
            };
            (fill(own.words.en), fill(own.words.pt_br))
        }
    };
    let [title, text] = match lang {
        Lang::En => en,
        Lang::PtBr => pt,
    };
    Response::html(
        reason.status(),
        page_in(lang.code(), &title, &title, &[text], false),
    )
    .with_header("Content-Language", lang.code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn language_follows_preferences() {
        assert_eq!(
            Lang::from_accept_language(Some("pt-BR,pt;q=0.9,en;q=0.8")),
            Lang::PtBr
        );
        assert_eq!(
            Lang::from_accept_language(Some("en-US,en;q=0.9,pt;q=0.8")),
            Lang::En
        );
        assert_eq!(
            Lang::from_accept_language(Some("fr-FR, pt;q=0.5")),
            Lang::PtBr
        );
        assert_eq!(
            Lang::from_accept_language(Some("en;q=0.1, pt-PT;q=0.9")),
            Lang::PtBr
        );
        assert_eq!(Lang::from_accept_language(Some("de")), Lang::En);
        assert_eq!(Lang::from_accept_language(None), Lang::En);
    }

    #[test]
    fn every_failure_page_is_kind_and_closed() {
        for reason in crate::provider::every_reason() {
            for lang in [Lang::En, Lang::PtBr] {
                let r = failure(lang, reason, "GitHub");
                assert_eq!(r.status, reason.status());
                assert_eq!(r.header("Cache-Control"), Some("no-store"));
                assert!(
                    !r.body_text().contains(reason.code()),
                    "{reason} shown to a person"
                );
            }
        }
        assert!(failure(Lang::PtBr, Reason::AccessDenied, "GitHub")
            .body_text()
            .contains("lang=\"pt-BR\""));
    }

    #[test]
    fn the_success_page_links_back_in_its_language() {
        let back = ReturnUrl {
            url: "https://chat.example.com/c/1?a=1&b=2#/room".into(),
            host: "chat.example.com".into(),
        };
        let r = success(Lang::En, "GitHub", false, Some(&back));
        let html = r.body_text();
        assert!(
            html.contains(
                "<a href=\"https://chat.example.com/c/1?a=1&amp;b=2#/room\" \
                 rel=\"noopener noreferrer\">Back to chat.example.com</a>"
            ),
            "{html}"
        );
        let r = success(Lang::PtBr, "GitHub", false, Some(&back));
        assert!(r.body_text().contains(">Voltar para chat.example.com</a>"));
        assert_eq!(r.header("Content-Language"), Some("pt-BR"));
        assert!(!success(Lang::En, "GitHub", false, None)
            .body_text()
            .contains("<a "));
    }

    #[test]
    fn pages_name_the_provider_and_escape_it() {
        let r = success(Lang::En, "Microsoft 365", true, None);
        assert!(r
            .body_text()
            .contains("Microsoft 365 connected (read-only)"));
        let r = success(Lang::PtBr, "GitHub", false, None);
        assert!(r.body_text().contains("GitHub conectado"));
        assert!(!r.body_text().contains("somente leitura"));
        let r = failure(Lang::En, Reason::AccessDenied, "Corp <SSO>");
        assert!(r.body_text().contains("the Corp &lt;SSO&gt; sign-in"));
        assert!(!r.body_text().contains("<SSO>"));
    }
}
