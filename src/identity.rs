//! Who signed in, as a provider vouches for it, in every provider's terms (`Identity`). A leaf
//! module: providers produce it, the broker checks it against the expected account and the
//! kept connections record it, without depending on each other for the type.

/// Who signed in, as the provider vouches for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The provider's stable id of the account (never reassigned, unlike e-mail addresses).
    pub subject: String,
    /// The account's e-mail address, lower-cased.
    pub email: Option<String>,
    /// Whether the provider vouches that the address belongs to the account: only then does
    /// an e-mail match count.
    pub email_verified: bool,
    /// Another address the account carries that the provider does not vouch for, when `email`
    /// is one it does (Microsoft without a pinned tenant: Graph's `mail` when `xms_edov` vouches
    /// for a different id_token `email`). An expected e-mail matching only this fails as
    /// unverified.
    pub unverified_email: Option<String>,
    /// The tenant the account belongs to, for providers that have tenants.
    pub tenant: Option<String>,
}
