//! What the broker tells a person, in English and Brazilian Portuguese, chosen by
//! `Accept-Language`. Pages never show tokens, codes, state values or provider error text: each
//! failure reason maps to a fixed, kind sentence and what to do next.

use crate::error::Reason;
use crate::http::Response;
use crate::pages::page_in;

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

pub fn success(lang: Lang) -> Response {
    let (title, text) = match lang {
        Lang::En => (
            "Microsoft 365 connected (read-only)",
            "Your Microsoft 365 account is connected. The assistant can read your mail and calendar; it cannot send, change or delete anything. You can close this window and go back to the chat.",
        ),
        Lang::PtBr => (
            "Microsoft 365 conectado (somente leitura)",
            "Sua conta do Microsoft 365 está conectada. O assistente pode ler seus e-mails e sua agenda; ele não pode enviar, alterar nem apagar nada. Você já pode fechar esta janela e voltar para a conversa.",
        ),
    };
    Response::html(
        200,
        page_in(lang.code(), title, title, &[text.into()], true),
    )
}

/// The page for a failure reason, with the reason's HTTP status (chosen in `error.rs`). The
/// match is exhaustive: a new reason needs its words here.
pub fn failure(lang: Lang, reason: Reason) -> Response {
    let (en, pt): ([&str; 2], [&str; 2]) = match reason {
        Reason::AccessDenied => (
            ["Sign-in cancelled", "You cancelled the Microsoft sign-in, so nothing was connected. If that was not what you wanted, ask the assistant for a new link."],
            ["Login cancelado", "Você cancelou o login da Microsoft, então nada foi conectado. Se não era isso que você queria, peça um novo link ao assistente."]),
        Reason::EmailMismatch | Reason::SubjectMismatch => (
            ["A different account was used", "You signed in with a different Microsoft account than the one this link is for, so nothing was connected. Ask the assistant for a new link and sign in with the right account."],
            ["Outra conta foi usada", "Você entrou com uma conta da Microsoft diferente daquela para a qual este link foi criado, então nada foi conectado. Peça um novo link ao assistente e entre com a conta certa."]),
        Reason::EmailUnverified => (
            ["This account's e-mail address is not verified", "The account you signed in with has the right e-mail address, but Microsoft does not confirm that it belongs to you, so nothing was connected. Verify the address first, then ask the assistant for a new link."],
            ["O e-mail desta conta não foi verificado", "A conta com que você entrou tem o e-mail certo, mas a Microsoft não confirma que ele é seu, então nada foi conectado. Verifique o endereço primeiro e depois peça um novo link ao assistente."]),
        Reason::TenantMismatch | Reason::HostedDomainMismatch => (
            ["This account's organization is not allowed", "The account you signed in with belongs to a different organization, so nothing was connected. Ask the assistant for a new link and sign in with your work account."],
            ["A organização desta conta não é permitida", "A conta com que você entrou pertence a outra organização, então nada foi conectado. Peça um novo link ao assistente e entre com sua conta de trabalho."]),
        Reason::LinkUnknown | Reason::StateUnknown | Reason::StateMissing => (
            ["This link is not valid", "This sign-in link is incomplete or unknown. Ask the assistant for a new link."],
            ["Este link não é válido", "Este link de login está incompleto ou é desconhecido. Peça um novo link ao assistente."]),
        Reason::LinkExpired | Reason::StateExpired => (
            ["This link has expired", "Sign-in links work for a few minutes only. Ask the assistant for a new link."],
            ["Este link expirou", "Os links de login valem só por alguns minutos. Peça um novo link ao assistente."]),
        Reason::AlreadyConnected => (
            ["Already connected", "This sign-in is already complete. You can close this window and go back to the chat."],
            ["Já conectado", "Este login já foi concluído. Você já pode fechar esta janela e voltar para a conversa."]),
        Reason::StateReused | Reason::LinkUsed => (
            ["This link was already used", "This sign-in link has already been used. If you still need to connect, ask the assistant for a new link."],
            ["Este link já foi usado", "Este link de login já foi usado. Se ainda precisar conectar, peça um novo link ao assistente."]),
        Reason::Unavailable => (
            ["Please try again in a minute", "The sign-in service is busy right now. Wait a minute and open the link again."],
            ["Tente de novo em um minuto", "O serviço de login está ocupado agora. Espere um minuto e abra o link de novo."]),
        Reason::ProviderError
        | Reason::IssuerMismatch
        | Reason::ExchangeFailed
        | Reason::NoRefreshToken
        | Reason::IdTokenInvalid
        | Reason::GraphFailed
        | Reason::ProfileFailed => (
            ["We could not connect your account", "Microsoft did not complete the sign-in, so nothing was connected. Ask the assistant for a new link; if it happens again, tell the person who sent it."],
            ["Não foi possível conectar sua conta", "A Microsoft não concluiu o login, então nada foi conectado. Peça um novo link ao assistente; se acontecer de novo, avise quem enviou o link."]),
    };
    let [title, text] = match lang {
        Lang::En => en,
        Lang::PtBr => pt,
    };
    Response::html(
        reason.status(),
        page_in(lang.code(), title, title, &[text.into()], false),
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
        for reason in Reason::ALL {
            for lang in [Lang::En, Lang::PtBr] {
                let r = failure(lang, reason);
                assert_eq!(r.status, reason.status());
                assert_eq!(r.header("Cache-Control"), Some("no-store"));
                assert!(
                    !r.body_text().contains(reason.code()),
                    "{reason} shown to a person"
                );
            }
        }
        assert!(failure(Lang::PtBr, Reason::AccessDenied)
            .body_text()
            .contains("lang=\"pt-BR\""));
    }
}
