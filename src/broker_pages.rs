//! What the broker tells a person, in English and Brazilian Portuguese, chosen by
//! `Accept-Language`. Pages never show tokens, codes, state values or provider error text: each
//! failure reason maps to a fixed, kind sentence and what to do next.

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

/// The page for a failure reason code (see the README's list), with its HTTP status.
pub fn failure(lang: Lang, reason: &str) -> Response {
    let (status, en, pt): (u16, [&str; 2], [&str; 2]) = match reason {
        "access_denied" => (200,
            ["Sign-in cancelled", "You cancelled the Microsoft sign-in, so nothing was connected. If that was not what you wanted, ask the assistant for a new link."],
            ["Login cancelado", "Você cancelou o login da Microsoft, então nada foi conectado. Se não era isso que você queria, peça um novo link ao assistente."]),
        "email_mismatch" => (403,
            ["A different account was used", "You signed in with a different Microsoft account than the one this link is for, so nothing was connected. Ask the assistant for a new link and sign in with the right account."],
            ["Outra conta foi usada", "Você entrou com uma conta da Microsoft diferente daquela para a qual este link foi criado, então nada foi conectado. Peça um novo link ao assistente e entre com a conta certa."]),
        "tenant_mismatch" => (403,
            ["This account's organization is not allowed", "The account you signed in with belongs to a different organization, so nothing was connected. Ask the assistant for a new link and sign in with your work account."],
            ["A organização desta conta não é permitida", "A conta com que você entrou pertence a outra organização, então nada foi conectado. Peça um novo link ao assistente e entre com sua conta de trabalho."]),
        "link_unknown" | "state_unknown" | "state_missing" => (404,
            ["This link is not valid", "This sign-in link is incomplete or unknown. Ask the assistant for a new link."],
            ["Este link não é válido", "Este link de login está incompleto ou é desconhecido. Peça um novo link ao assistente."]),
        "link_expired" | "state_expired" => (410,
            ["This link has expired", "Sign-in links work for a few minutes only. Ask the assistant for a new link."],
            ["Este link expirou", "Os links de login valem só por alguns minutos. Peça um novo link ao assistente."]),
        "already_connected" => (200,
            ["Already connected", "This sign-in is already complete. You can close this window and go back to the chat."],
            ["Já conectado", "Este login já foi concluído. Você já pode fechar esta janela e voltar para a conversa."]),
        "state_reused" | "link_used" => (409,
            ["This link was already used", "This sign-in link has already been used. If you still need to connect, ask the assistant for a new link."],
            ["Este link já foi usado", "Este link de login já foi usado. Se ainda precisar conectar, peça um novo link ao assistente."]),
        "unavailable" => (503,
            ["Please try again in a minute", "The sign-in service is busy right now. Wait a minute and open the link again."],
            ["Tente de novo em um minuto", "O serviço de login está ocupado agora. Espere um minuto e abra o link de novo."]),
        // provider_error, exchange_failed, no_refresh_token, graph_failed, and anything new.
        _ => (502,
            ["We could not connect your account", "Microsoft did not complete the sign-in, so nothing was connected. Ask the assistant for a new link; if it happens again, tell the person who sent it."],
            ["Não foi possível conectar sua conta", "A Microsoft não concluiu o login, então nada foi conectado. Peça um novo link ao assistente; se acontecer de novo, avise quem enviou o link."]),
    };
    let [title, text] = match lang {
        Lang::En => en,
        Lang::PtBr => pt,
    };
    Response::html(
        status,
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
        for reason in [
            "access_denied",
            "email_mismatch",
            "tenant_mismatch",
            "state_unknown",
            "state_expired",
            "state_reused",
            "exchange_failed",
            "graph_failed",
            "no_refresh_token",
            "unavailable",
        ] {
            for lang in [Lang::En, Lang::PtBr] {
                let r = failure(lang, reason);
                assert!(r.status >= 200 && r.header("Cache-Control") == Some("no-store"));
                assert!(
                    !r.body_text().contains(reason),
                    "{reason} shown to a person"
                );
            }
        }
        assert!(failure(Lang::PtBr, "access_denied")
            .body_text()
            .contains("lang=\"pt-BR\""));
    }
}
