//! The authorization server every fake identity provider is built on: authorization codes,
//! grants, access and refresh tokens, refresh-token rotation by a policy given as data, client
//! authentication as data, the checks every authorize request goes through, the token
//! endpoint's delays and injected faults, and the counters tests read. The core decides *what*
//! is wrong (typed errors); each provider's file says it the way its provider does (statuses,
//! error shapes, wording) and keeps only its quirks (extra parameters, APIs, token formats).
//!
//! A fake is a `Running<AsState<Config, User, Own>>` (fake_provider.rs): its settings, this
//! core, and what is its own (users, keys, API counters). Tests use the core through the fake:
//!
//! ```ignore
//! let fake = FakeMicrosoft::start();
//! fake.set(|c| c.refresh_policy = RefreshPolicy::github_app());   // another provider's rule
//! fake.inject_token_fault(Fault::after(FaultKind::NoAnswer));       // the next token request
//! assert_eq!(fake.counters().refreshes, 1);                          // one redemption
//! assert!(fake.max_presentations() <= 1);                            // no token presented twice
//! ```

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::fake_http::FakeReply;
use super::fake_provider::{is_b64url, is_pkce_verifier, param, pkce_challenge, typed_reply, Core};

/// Request parameters, decoded, in order.
pub type Params = Vec<(String, String)>;

// ---------------------------------------------------------------------------------------------
// Refresh-token policy

/// What becomes of a refresh token once it has been used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rotation {
    /// No new refresh token is returned; the same one keeps working until it is revoked or
    /// expires.
    Never,
    /// A new refresh token on every use, and the used one keeps working too.
    KeepOld,
    /// A new refresh token on every use, and the used one is spent. Presented again within
    /// `grace` of its use, it answers again with the same successor (Dex's `reuseInterval`:
    /// "return previously generated token", server/refreshhandlers.go; Okta's and Auth0's grace
    /// period); after that it is a reuse.
    OneTime { grace: Duration },
}

/// A provider's refresh-token rule, as data: any fake can be given another provider's rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefreshPolicy {
    pub rotation: Rotation,
    /// A reuse (a spent token presented after its grace window) revokes the whole grant: the
    /// token that replaced it and every access token (RFC 9700 4.14.2, "at the cost of forcing
    /// the legitimate client to obtain a fresh authorization grant").
    pub revoke_grant_on_reuse: bool,
    /// A rotation also ends the access tokens issued before it.
    pub rotation_ends_old_access: bool,
}

impl RefreshPolicy {
    /// GitHub Apps with expiring user tokens: "once you use a refresh token, that refresh token
    /// and the old user access token will no longer work" (docs.github.com, "Refreshing user
    /// access tokens"); no grace window. A spent token gets `bad_refresh_token`; GitHub
    /// documents nothing more, in particular no revocation of the tokens that replaced it, so
    /// reuse does not revoke the grant here (switch `revoke_grant_on_reuse` on to test RFC
    /// 9700's reuse detection against this fake).
    pub fn github_app() -> RefreshPolicy {
        RefreshPolicy {
            rotation: Rotation::OneTime {
                grace: Duration::ZERO,
            },
            revoke_grant_on_reuse: false,
            rotation_ends_old_access: true,
        }
    }

    /// Microsoft Entra: a refresh token "replaces itself with a fresh token upon every use",
    /// and the platform does not revoke the old one, so presenting it again works
    /// (learn.microsoft.com, identity-platform/refresh-tokens). Access tokens are JWTs that
    /// stay valid until they expire.
    pub fn entra() -> RefreshPolicy {
        RefreshPolicy {
            rotation: Rotation::KeepOld,
            revoke_grant_on_reuse: false,
            rotation_ends_old_access: false,
        }
    }

    /// Google: no rotation in practice; the refresh token keeps working until it is revoked
    /// (the revoke endpoint), unused for 6 months, or 7 days old for apps in "Testing".
    pub fn google() -> RefreshPolicy {
        RefreshPolicy {
            rotation: Rotation::Never,
            revoke_grant_on_reuse: false,
            rotation_ends_old_access: false,
        }
    }

    /// Okta, Auth0 and Dex style: one-time refresh tokens with a reuse grace window (Dex's
    /// default is 3 s), and a reuse after the window revokes the grant, as Auth0's reuse
    /// detection does (Dex answers `invalid_grant` without revoking: clear
    /// `revoke_grant_on_reuse` for that).
    pub fn one_time_with_grace(grace: Duration) -> RefreshPolicy {
        RefreshPolicy {
            rotation: Rotation::OneTime { grace },
            revoke_grant_on_reuse: true,
            rotation_ends_old_access: false,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Injected faults and counters

/// What goes wrong with one token request (the refresh-race tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Answer with this status and a gateway's small HTML page, as a load balancer in front of
    /// the provider does.
    Status(u16),
    /// Close the connection without a byte of answer.
    NoAnswer,
    /// Keep the connection open without answering until the client gives up (or the fake is
    /// dropped): a time-out.
    Hang,
    /// Answer normally, this much later.
    Delay(Duration),
}

/// When a fault strikes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum When {
    /// Before the request is processed: nothing changed at the provider.
    Before,
    /// After it was processed: the code is redeemed, the refresh token rotated; only the answer
    /// is lost or late. The ambiguous case a client cannot tell from `Before`.
    After,
}

/// One injected fault, for the next token request (`inject_token_fault`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    pub kind: FaultKind,
    pub when: When,
}

impl Fault {
    pub fn before(kind: FaultKind) -> Fault {
        Fault {
            kind,
            when: When::Before,
        }
    }

    pub fn after(kind: FaultKind) -> Fault {
        Fault {
            kind,
            when: When::After,
        }
    }
}

/// How long `FaultKind::Hang` holds a connection when nobody drops the fake.
const HANG: Duration = Duration::from_secs(600);

/// What the authorization server has done, for assertions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Requests to the token endpoint, any outcome.
    pub token_calls: usize,
    pub codes_issued: usize,
    pub codes_redeemed: usize,
    /// Token requests with `grant_type=refresh_token` naming a token, any outcome, counted on
    /// arrival (before any injected fault): what a client presented.
    pub refresh_presentations: usize,
    /// Successful refreshes.
    pub refreshes: usize,
    /// Spent refresh tokens presented after their grace window.
    pub reuse_detections: usize,
    /// Successful revocation requests (RFC 7009, GitHub's grant deletion, Graph's
    /// `revokeSignInSessions`).
    pub revocations: usize,
    /// Grants ended, for any reason: revocation, reuse detection, a test's `revoke_grants`.
    pub grants_revoked: usize,
}

// ---------------------------------------------------------------------------------------------
// Client authentication

/// The client as registered. `secret: None` is a public client (token endpoint auth method
/// `none`); otherwise a confidential one, which sends its secret in the form
/// (`client_secret_post`) or with HTTP Basic (`client_secret_basic`).
pub struct ClientRule<'a> {
    pub client_id: &'a str,
    pub secret: Option<&'a str>,
}

/// How a client authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    None,
    SecretPost,
    SecretBasic,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientError {
    MissingId,
    UnknownId(String),
    /// A confidential client sent no secret.
    MissingSecret,
    WrongSecret,
    /// A public client sent a secret.
    SecretFromPublicClient,
}

/// RFC 6749 2.3.1: the client id from the form or from HTTP Basic (`basic`, decoded the
/// provider's way), then the secret as `rule` asks. The client id and how it authenticated.
pub fn authenticate_client(
    params: &Params,
    basic: Option<&(String, String)>,
    rule: &ClientRule,
) -> Result<(String, ClientAuth), ClientError> {
    let client_id = param(params, "client_id")
        .map(str::to_string)
        .or_else(|| basic.map(|(id, _)| id.clone()))
        .filter(|id| !id.is_empty())
        .ok_or(ClientError::MissingId)?;
    if client_id != rule.client_id {
        return Err(ClientError::UnknownId(client_id));
    }
    let presented = match (param(params, "client_secret"), basic) {
        (Some(s), _) if !s.is_empty() => Some((s.to_string(), ClientAuth::SecretPost)),
        (_, Some((_, s))) if !s.is_empty() => Some((s.clone(), ClientAuth::SecretBasic)),
        _ => None,
    };
    match (rule.secret, presented) {
        (None, None) => Ok((client_id, ClientAuth::None)),
        (None, Some(_)) => Err(ClientError::SecretFromPublicClient),
        (Some(_), None) => Err(ClientError::MissingSecret),
        (Some(expected), Some((given, how))) if given == expected => Ok((client_id, how)),
        (Some(_), Some(_)) => Err(ClientError::WrongSecret),
    }
}

// ---------------------------------------------------------------------------------------------
// The authorize request

/// What a provider's authorize endpoint checks, as data.
pub struct AuthorizeRules<'a> {
    pub client_id: &'a str,
    /// Registered redirect URIs; the request's must equal one byte for byte.
    pub redirect_uris: &'a [String],
    /// No `redirect_uri` means the first registered one (GitHub) instead of an error.
    pub default_redirect_uri: bool,
    /// `response_type=code` is required (GitHub's authorize has no such parameter).
    pub response_type: bool,
    pub require_scope: bool,
    pub require_state: bool,
    pub pkce: PkceRules<'a>,
}

/// RFC 7636 as a provider applies it.
pub struct PkceRules<'a> {
    pub required: bool,
    /// `S256`, `plain`.
    pub methods: &'a [&'a str],
    /// The method of a challenge sent without one: RFC 7636's `plain`, or `None` to refuse it.
    pub default_method: Option<&'a str>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthorizeError {
    MissingClientId,
    UnknownClient(String),
    MissingRedirectUri,
    UnregisteredRedirectUri(String),
    // From here on the redirect URI is known: a provider may send the error there.
    MissingResponseType,
    UnsupportedResponseType(String),
    MissingScope,
    MissingState,
    MissingChallenge,
    /// Not one of the provider's methods (`""` when none was sent and there is no default).
    UnsupportedChallengeMethod(String),
    InvalidChallenge,
}

/// A refused authorize request: why, and (once the redirect URI was checked) where a provider
/// that reports errors to the client sends it.
#[derive(Clone, Debug)]
pub struct Refusal {
    pub error: AuthorizeError,
    pub redirect_uri: Option<String>,
}

/// A PKCE code challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub method: String,
    pub value: String,
}

impl Challenge {
    /// RFC 7636 4.6.
    pub fn verify(&self, verifier: &str) -> bool {
        is_pkce_verifier(verifier)
            && match self.method.as_str() {
                "S256" => pkce_challenge(verifier) == self.value,
                _ => verifier == self.value,
            }
    }
}

/// An authorize request that passed the checks every provider makes.
#[derive(Clone, Debug)]
pub struct AuthorizeRequest {
    pub client_id: String,
    pub redirect_uri: String,
    pub state: Option<String>,
    /// The `scope` parameter as sent (each provider splits it its own way).
    pub scope: String,
    pub challenge: Option<Challenge>,
    pub nonce: Option<String>,
}

/// The checks in the order OAuth 2.0 implies: the client and its redirect URI first (errors
/// before that must not redirect, RFC 6749 4.1.2.1), then the rest.
pub fn check_authorize(
    params: &Params,
    rules: &AuthorizeRules,
) -> Result<AuthorizeRequest, Refusal> {
    let p = |k: &str| param(params, k).map(str::to_string);
    let state = p("state");
    let refuse = |error, redirect_uri: Option<&String>| Refusal {
        error,
        redirect_uri: redirect_uri.cloned(),
    };
    let client_id = p("client_id").ok_or_else(|| refuse(AuthorizeError::MissingClientId, None))?;
    if client_id != rules.client_id {
        return Err(refuse(AuthorizeError::UnknownClient(client_id), None));
    }
    let redirect_uri = match p("redirect_uri") {
        Some(uri) if rules.redirect_uris.contains(&uri) => uri,
        Some(uri) => return Err(refuse(AuthorizeError::UnregisteredRedirectUri(uri), None)),
        None if rules.default_redirect_uri && !rules.redirect_uris.is_empty() => {
            rules.redirect_uris[0].clone()
        }
        None => return Err(refuse(AuthorizeError::MissingRedirectUri, None)),
    };
    let to = Some(&redirect_uri);
    if rules.response_type {
        match p("response_type").as_deref() {
            None => return Err(refuse(AuthorizeError::MissingResponseType, to)),
            Some("code") => {}
            Some(other) => {
                let error = AuthorizeError::UnsupportedResponseType(other.into());
                return Err(refuse(error, to));
            }
        }
    }
    let scope = p("scope").unwrap_or_default();
    if rules.require_scope && scope.trim().is_empty() {
        return Err(refuse(AuthorizeError::MissingScope, to));
    }
    if rules.require_state && state.as_deref().unwrap_or("").is_empty() {
        return Err(refuse(AuthorizeError::MissingState, to));
    }
    let pkce = &rules.pkce;
    let challenge = match (p("code_challenge"), p("code_challenge_method")) {
        (None, None) if pkce.required => return Err(refuse(AuthorizeError::MissingChallenge, to)),
        (None, None) => None,
        (None, Some(_)) => return Err(refuse(AuthorizeError::MissingChallenge, to)),
        (Some(value), method) => {
            let method = method
                .or(pkce.default_method.map(str::to_string))
                .unwrap_or_default();
            if !pkce.methods.contains(&method.as_str()) {
                let error = AuthorizeError::UnsupportedChallengeMethod(method);
                return Err(refuse(error, to));
            }
            let well_formed = if method == "S256" {
                value.len() == 43 && is_b64url(&value)
            } else {
                is_pkce_verifier(&value)
            };
            if !well_formed {
                return Err(refuse(AuthorizeError::InvalidChallenge, to));
            }
            Some(Challenge { method, value })
        }
    };
    Ok(AuthorizeRequest {
        client_id,
        redirect_uri,
        state,
        scope,
        challenge,
        nonce: p("nonce"),
    })
}

/// Who is at the keyboard when an authorize URL runs.
pub enum Who<'a, U> {
    /// Fetched over HTTP: the configured person, who refuses when the fake is set to cancel.
    Browser,
    /// A test's `sign_in(url, &user)`.
    User(&'a U),
    /// A test's `decline(url)`.
    Decline,
}

impl<U: Clone> Who<'_, U> {
    /// The person who signs in, or `None` when they refuse.
    pub fn consents(self, cancel: bool, configured: &U) -> Option<U> {
        match self {
            Who::Decline => None,
            Who::Browser if cancel => None,
            Who::Browser => Some(configured.clone()),
            Who::User(u) => Some(u.clone()),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Codes, grants and tokens

pub type GrantId = u64;

/// An authorization code: one-time, bound to the client, the redirect URI, the PKCE challenge
/// and the nonce; `user` is who signed in (and whatever the provider keeps with it).
pub struct Code<U> {
    pub client_id: String,
    pub redirect_uri: String,
    pub challenge: Option<Challenge>,
    pub nonce: Option<String>,
    pub scopes: Vec<String>,
    pub user: U,
    issued: Instant,
    redeemed: bool,
}

/// What a redeemed code granted: the refresh and access tokens that follow belong to it, and
/// revoking it ends them all.
pub struct Grant<U> {
    pub client_id: String,
    pub scopes: Vec<String>,
    pub user: U,
    pub revoked: bool,
    /// Bumped by every rotation; access tokens remember the one they were issued under.
    generation: u32,
}

pub struct AccessToken {
    pub grant: GrantId,
    pub scopes: Vec<String>,
    /// `None`: valid until revoked (GitHub OAuth apps).
    pub expires: Option<Instant>,
    generation: u32,
}

impl AccessToken {
    pub fn expired(&self) -> bool {
        self.expires.is_some_and(|e| Instant::now() >= e)
    }
}

struct RefreshToken {
    grant: GrantId,
    expires: Option<Instant>,
    /// When it was used and the token that replaced it (rotating policies).
    spent: Option<(Instant, String)>,
}

/// A code redemption, as the token request asked it.
pub struct Redemption<'a> {
    pub code: &'a str,
    pub client_id: &'a str,
    /// `None`: not sent (GitHub makes it optional; other providers refuse that before asking).
    pub redirect_uri: Option<&'a str>,
    pub verifier: Option<&'a str>,
    pub code_lifetime: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CodeError {
    Unknown,
    Redeemed,
    Expired,
    OtherClient,
    RedirectMismatch { expected: String },
    MissingVerifier,
    WrongVerifier,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshError {
    Unknown,
    /// Its grant was revoked.
    Revoked,
    OtherClient,
    Expired,
    /// Spent, and presented after its grace window.
    Reused,
}

/// A refresh token that passed the checks (`present_refresh`), waiting for `commit_refresh`.
pub struct Presented {
    pub grant: GrantId,
    /// Presented again within its grace window: the token that already replaced it.
    successor: Option<String>,
}

/// The authorization server's state: one per fake, inside its lock.
pub struct AuthServer<U> {
    codes: HashMap<String, Code<U>>,
    grants: HashMap<GrantId, Grant<U>>,
    access: HashMap<String, AccessToken>,
    refresh: HashMap<String, RefreshToken>,
    next_grant: GrantId,
    presentations: HashMap<String, usize>,
    faults: VecDeque<Fault>,
    pub counters: Counters,
    /// Every authorize request's query parameters, in order.
    pub authorize_requests: Vec<Params>,
    /// Every token request's parameters (secrets and verifiers included), in order.
    pub token_requests: Vec<Params>,
}

impl<U> Default for AuthServer<U> {
    fn default() -> Self {
        AuthServer {
            codes: HashMap::new(),
            grants: HashMap::new(),
            access: HashMap::new(),
            refresh: HashMap::new(),
            next_grant: 1,
            presentations: HashMap::new(),
            faults: VecDeque::new(),
            counters: Counters::default(),
            authorize_requests: Vec::new(),
            token_requests: Vec::new(),
        }
    }
}

impl<U: Clone> AuthServer<U> {
    /// Stores `code` for `request`, granting `scopes` to `user`.
    pub fn issue_code(
        &mut self,
        code: String,
        request: &AuthorizeRequest,
        scopes: Vec<String>,
        user: U,
    ) -> String {
        self.counters.codes_issued += 1;
        self.codes.insert(
            code.clone(),
            Code {
                client_id: request.client_id.clone(),
                redirect_uri: request.redirect_uri.clone(),
                challenge: request.challenge.clone(),
                nonce: request.nonce.clone(),
                scopes,
                user,
                issued: Instant::now(),
                redeemed: false,
            },
        );
        code
    }

    /// The code, if `r` may redeem it. Nothing changes (a provider may check more, then
    /// `redeem_code`): a failed attempt leaves the code usable, as providers do.
    pub fn check_code(&self, r: &Redemption) -> Result<&Code<U>, CodeError> {
        let code = self.codes.get(r.code).ok_or(CodeError::Unknown)?;
        if code.redeemed {
            return Err(CodeError::Redeemed);
        }
        if code.issued.elapsed() > r.code_lifetime {
            return Err(CodeError::Expired);
        }
        if code.client_id != r.client_id {
            return Err(CodeError::OtherClient);
        }
        if r.redirect_uri.is_some_and(|uri| uri != code.redirect_uri) {
            return Err(CodeError::RedirectMismatch {
                expected: code.redirect_uri.clone(),
            });
        }
        if let Some(challenge) = &code.challenge {
            let verifier = r.verifier.ok_or(CodeError::MissingVerifier)?;
            if !challenge.verify(verifier) {
                return Err(CodeError::WrongVerifier);
            }
        }
        Ok(code)
    }

    /// Spends a code `check_code` accepted and opens its grant.
    pub fn redeem_code(&mut self, code: &str) -> GrantId {
        let code = self.codes.get_mut(code).expect("a checked code");
        code.redeemed = true;
        let grant = Grant {
            client_id: code.client_id.clone(),
            scopes: code.scopes.clone(),
            user: code.user.clone(),
            revoked: false,
            generation: 0,
        };
        self.counters.codes_redeemed += 1;
        let id = self.next_grant;
        self.next_grant += 1;
        self.grants.insert(id, grant);
        id
    }

    pub fn grant(&self, id: GrantId) -> &Grant<U> {
        &self.grants[&id]
    }

    /// The checks of a refresh token under `policy`. Nothing changes but on a reuse (counted,
    /// and the grant revoked if the policy says so); a provider may check more, then
    /// `commit_refresh`.
    pub fn present_refresh(
        &mut self,
        token: &str,
        client_id: &str,
        policy: &RefreshPolicy,
    ) -> Result<Presented, RefreshError> {
        let rt = self.refresh.get(token).ok_or(RefreshError::Unknown)?;
        let grant_id = rt.grant;
        let grant = &self.grants[&grant_id];
        if grant.revoked {
            return Err(RefreshError::Revoked);
        }
        if grant.client_id != client_id {
            return Err(RefreshError::OtherClient);
        }
        if rt.expires.is_some_and(|e| Instant::now() >= e) {
            return Err(RefreshError::Expired);
        }
        let mut successor = None;
        if let Some((used, next)) = &rt.spent {
            match policy.rotation {
                Rotation::Never | Rotation::KeepOld => {}
                Rotation::OneTime { grace } if used.elapsed() <= grace => {
                    successor = Some(next.clone());
                }
                Rotation::OneTime { .. } => {
                    self.counters.reuse_detections += 1;
                    if policy.revoke_grant_on_reuse {
                        self.revoke_grant(grant_id);
                    }
                    return Err(RefreshError::Reused);
                }
            }
        }
        Ok(Presented {
            grant: grant_id,
            successor,
        })
    }

    /// Uses a refresh token `present_refresh` accepted: the refresh token to return (`None`
    /// under `Rotation::Never`); `fresh` makes a new one, which lives `lifetime`.
    pub fn commit_refresh(
        &mut self,
        token: &str,
        presented: Presented,
        policy: &RefreshPolicy,
        lifetime: Option<Duration>,
        fresh: impl FnOnce() -> String,
    ) -> Option<String> {
        self.counters.refreshes += 1;
        if presented.successor.is_some() {
            return presented.successor;
        }
        if policy.rotation == Rotation::Never {
            return None;
        }
        let next = fresh();
        let grant_id = presented.grant;
        let grant = self.grants.get_mut(&grant_id).expect("a presented grant");
        grant.generation += 1;
        let generation = grant.generation;
        if policy.rotation_ends_old_access {
            self.access
                .retain(|_, a| a.grant != grant_id || a.generation >= generation);
        }
        if let Some(old) = self.refresh.get_mut(token) {
            old.spent = Some((Instant::now(), next.clone()));
        }
        self.issue_refresh(next.clone(), grant_id, lifetime);
        Some(next)
    }

    pub fn issue_refresh(&mut self, token: String, grant: GrantId, lifetime: Option<Duration>) {
        let expires = lifetime.map(|l| Instant::now() + l);
        self.refresh.insert(
            token,
            RefreshToken {
                grant,
                expires,
                spent: None,
            },
        );
    }

    pub fn issue_access(
        &mut self,
        token: String,
        grant: GrantId,
        scopes: Vec<String>,
        lifetime: Option<Duration>,
    ) {
        let generation = self.grants[&grant].generation;
        self.access.insert(
            token,
            AccessToken {
                grant,
                scopes,
                expires: lifetime.map(|l| Instant::now() + l),
                generation,
            },
        );
    }

    /// An access token and its grant, expired or revoked ones included.
    pub fn access(&self, token: &str) -> Option<(&AccessToken, &Grant<U>)> {
        let at = self.access.get(token)?;
        Some((at, &self.grants[&at.grant]))
    }

    /// An access token that still works: known, not expired, its grant not revoked.
    pub fn live_access(&self, token: &str) -> Option<(&AccessToken, &Grant<U>)> {
        self.access(token)
            .filter(|(at, grant)| !at.expired() && !grant.revoked)
    }

    /// The grant of an access or refresh token.
    pub fn grant_of(&self, token: &str) -> Option<GrantId> {
        self.access
            .get(token)
            .map(|a| a.grant)
            .or_else(|| self.refresh.get(token).map(|r| r.grant))
    }

    /// Ends a grant: its refresh tokens answer `Revoked`, its access tokens stop being live.
    pub fn revoke_grant(&mut self, id: GrantId) {
        if let Some(grant) = self.grants.get_mut(&id) {
            if !grant.revoked {
                grant.revoked = true;
                self.counters.grants_revoked += 1;
            }
        }
    }

    /// RFC 7009: ends the grant of a refresh or access token; `false` for an unknown token or
    /// one whose grant is already revoked.
    pub fn revoke_token(&mut self, token: &str) -> bool {
        match self.grant_of(token) {
            Some(id) if !self.grants[&id].revoked => {
                self.revoke_grant(id);
                self.counters.revocations += 1;
                true
            }
            _ => false,
        }
    }

    /// Ends every live grant `which` selects; how many.
    pub fn revoke_grants_where(&mut self, which: impl Fn(&Grant<U>) -> bool) -> usize {
        let ids: Vec<GrantId> = self
            .grants
            .iter()
            .filter(|(_, g)| !g.revoked && which(g))
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            self.revoke_grant(*id);
        }
        ids.len()
    }
}

// ---------------------------------------------------------------------------------------------
// The token request

/// What a provider's token endpoint checks, as data.
pub struct TokenRules<'a> {
    pub client: ClientRule<'a>,
    /// The grant type of a request without `grant_type` (GitHub: a code); `None`: refused.
    pub default_grant_type: Option<&'a str>,
    /// The client is authenticated before the grant type is looked at (GitHub).
    pub client_first: bool,
    /// A code redemption must repeat `redirect_uri` (RFC 6749 4.1.3; GitHub makes it optional).
    pub redirect_uri_required: bool,
    pub code_lifetime: Duration,
    pub refresh_policy: RefreshPolicy,
    /// How long each new refresh token lives (`None`: until revoked).
    pub refresh_lifetime: Option<Duration>,
}

/// Why the core refused a token request; each provider says it its own way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenError {
    /// A required parameter is missing: `grant_type`, `code`, `redirect_uri`, `refresh_token`.
    Missing(&'static str),
    UnsupportedGrantType(String),
    Client(ClientError),
    Code(CodeError),
    Refresh(RefreshError),
}

/// A provider's side of a token request.
pub trait TokenQuirks<U> {
    /// The provider's answer to a refused request.
    fn refuse(&self, error: TokenError) -> FakeReply;
    /// A new refresh token, in the provider's format.
    fn new_refresh_token(&self) -> String;
    /// Whether redeeming a code grants a refresh token (offline access, a GitHub App, ...).
    fn refresh_on_code(&self, grant: &Grant<U>) -> bool;
    /// The provider's own checks once a code or a refresh token passed the core's (`granted`:
    /// the scopes consented to); an `Err` is the answer.
    fn check(&self, _granted: &[String]) -> Result<(), FakeReply> {
        Ok(())
    }
    /// Whether this client can have refresh tokens at all (GitHub OAuth apps cannot).
    fn refreshable(&self) -> bool {
        true
    }
}

/// A token request the core accepted.
pub struct Granted {
    pub grant: GrantId,
    pub client_id: String,
    /// The nonce of a redeemed code.
    pub nonce: Option<String>,
    /// The refresh token to return, if any.
    pub refresh_token: Option<String>,
}

impl<U: Clone> AuthServer<U> {
    /// RFC 6749 4.1.3 and 6 under `rules`: the client, the grant type, then the code (one-time,
    /// its client, redirect URI and PKCE verifier) or the refresh token (by the refresh
    /// policy); the answer to send otherwise, in the provider's words.
    pub fn token(
        &mut self,
        params: &Params,
        basic: Option<&(String, String)>,
        rules: &TokenRules,
        quirks: &impl TokenQuirks<U>,
    ) -> Result<Granted, FakeReply> {
        let refuse = |e: TokenError| quirks.refuse(e);
        let f = |k: &str| param(params, k);
        let authenticate = || {
            authenticate_client(params, basic, &rules.client)
                .map_err(|e| refuse(TokenError::Client(e)))
        };
        let early = if rules.client_first {
            Some(authenticate()?)
        } else {
            None
        };
        let grant_type = f("grant_type")
            .or(rules.default_grant_type)
            .ok_or_else(|| refuse(TokenError::Missing("grant_type")))?;
        if grant_type != "authorization_code" && grant_type != "refresh_token" {
            return Err(refuse(TokenError::UnsupportedGrantType(grant_type.into())));
        }
        let (client_id, _) = match early {
            Some(client) => client,
            None => authenticate()?,
        };
        if grant_type == "authorization_code" {
            let code = f("code").ok_or_else(|| refuse(TokenError::Missing("code")))?;
            let redirect_uri = f("redirect_uri");
            if rules.redirect_uri_required && redirect_uri.is_none() {
                return Err(refuse(TokenError::Missing("redirect_uri")));
            }
            let redemption = Redemption {
                code,
                client_id: &client_id,
                redirect_uri,
                verifier: f("code_verifier"),
                code_lifetime: rules.code_lifetime,
            };
            let checked = self
                .check_code(&redemption)
                .map_err(|e| refuse(TokenError::Code(e)))?;
            quirks.check(&checked.scopes)?;
            let nonce = checked.nonce.clone();
            let grant = self.redeem_code(code);
            let refresh_token = quirks.refresh_on_code(self.grant(grant)).then(|| {
                let token = quirks.new_refresh_token();
                self.issue_refresh(token.clone(), grant, rules.refresh_lifetime);
                token
            });
            return Ok(Granted {
                grant,
                client_id,
                nonce,
                refresh_token,
            });
        }
        if !quirks.refreshable() {
            return Err(refuse(TokenError::Refresh(RefreshError::Unknown)));
        }
        let token =
            f("refresh_token").ok_or_else(|| refuse(TokenError::Missing("refresh_token")))?;
        let policy = &rules.refresh_policy;
        let presented = self
            .present_refresh(token, &client_id, policy)
            .map_err(|e| refuse(TokenError::Refresh(e)))?;
        quirks.check(&self.grant(presented.grant).scopes)?;
        let grant = presented.grant;
        let refresh_token =
            self.commit_refresh(token, presented, policy, rules.refresh_lifetime, || {
                quirks.new_refresh_token()
            });
        Ok(Granted {
            grant,
            client_id,
            nonce: None,
            refresh_token,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// A fake's state, and what tests do with it

/// A fake's whole state: its settings, the authorization server, and what is its own.
pub struct AsState<C, U, X = ()> {
    pub cfg: C,
    pub auth: AuthServer<U>,
    pub own: X,
}

impl<C, U, X> AsState<C, U, X> {
    pub fn new(cfg: C, own: X) -> Self {
        AsState {
            cfg,
            auth: AuthServer::default(),
            own,
        }
    }
}

/// What every fake offers tests, whatever its provider.
impl<C: Clone, U: Clone, X, K> Core<AsState<C, U, X>, K> {
    /// A copy of the current configuration.
    pub fn config(&self) -> C {
        self.lock().cfg.clone()
    }

    /// Changes the configuration at run time: `fake.set(|c| c.cancel = true)`.
    pub fn set(&self, f: impl FnOnce(&mut C)) {
        f(&mut self.lock().cfg)
    }

    pub fn counters(&self) -> Counters {
        self.lock().auth.counters
    }

    /// Codes issued by the authorize endpoint.
    pub fn issued_codes(&self) -> usize {
        self.counters().codes_issued
    }

    /// Codes successfully redeemed.
    pub fn redeemed_codes(&self) -> usize {
        self.counters().codes_redeemed
    }

    /// Successful `grant_type=refresh_token` requests.
    pub fn refreshes(&self) -> usize {
        self.counters().refreshes
    }

    /// Requests to the token endpoint (any outcome).
    pub fn token_calls(&self) -> usize {
        self.counters().token_calls
    }

    /// Successful revocation requests.
    pub fn revocations(&self) -> usize {
        self.counters().revocations
    }

    /// How many token requests presented `refresh_token` (any outcome).
    pub fn presentations(&self, refresh_token: &str) -> usize {
        let st = self.lock();
        st.auth
            .presentations
            .get(refresh_token)
            .copied()
            .unwrap_or(0)
    }

    /// The most times any one refresh token was presented: 1 when none was presented twice.
    pub fn max_presentations(&self) -> usize {
        let st = self.lock();
        st.auth.presentations.values().copied().max().unwrap_or(0)
    }

    /// Every authorize request's query parameters, in order of arrival (HTTP and `sign_in`).
    pub fn authorize_requests(&self) -> Vec<Params> {
        self.lock().auth.authorize_requests.clone()
    }

    /// Every token request's parameters (secrets and verifiers included), in order.
    pub fn token_requests(&self) -> Vec<Params> {
        self.lock().auth.token_requests.clone()
    }

    /// The next token request (then the one after, in order of injection) meets `fault`.
    pub fn inject_token_fault(&self, fault: Fault) {
        self.lock().auth.faults.push_back(fault);
    }

    /// Makes every access token issued so far expired.
    pub fn expire_access_tokens(&self) {
        let now = Instant::now();
        for at in self.lock().auth.access.values_mut() {
            at.expires = Some(now);
        }
    }

    /// Forgets every access token issued so far: they are unknown from now on.
    pub fn revoke_access_tokens(&self) {
        self.lock().auth.access.clear();
    }

    /// Makes every refresh token issued so far expired.
    pub fn expire_refresh_tokens(&self) {
        let now = Instant::now();
        for rt in self.lock().auth.refresh.values_mut() {
            rt.expires = Some(now);
        }
    }

    /// Forgets every refresh token issued so far: they are unknown from now on.
    pub fn revoke_refresh_tokens(&self) {
        self.lock().auth.refresh.clear();
    }

    /// Revokes every grant, as an administrator would: their refresh tokens answer as revoked.
    /// How many were live.
    pub fn revoke_grants(&self) -> usize {
        self.lock().auth.revoke_grants_where(|_| true)
    }

    /// Serves one token request: records and counts it (and the refresh token it presents),
    /// holds it back `delay` (read from the configuration) and by the next injected fault, and
    /// otherwise answers with `answer`, run under the lock.
    pub fn serve_token(
        &self,
        params: Params,
        delay: impl FnOnce(&C) -> Duration,
        answer: impl FnOnce(&mut AsState<C, U, X>, &Params) -> FakeReply,
    ) -> FakeReply {
        let (delay, fault) = {
            let mut st = self.lock();
            let auth = &mut st.auth;
            auth.counters.token_calls += 1;
            if param(&params, "grant_type") == Some("refresh_token") {
                if let Some(token) = param(&params, "refresh_token") {
                    auth.counters.refresh_presentations += 1;
                    *auth.presentations.entry(token.to_string()).or_default() += 1;
                }
            }
            auth.token_requests.push(params.clone());
            let fault = auth.faults.pop_front();
            (delay(&st.cfg), fault)
        };
        self.nap(delay);
        let (before, after) = match fault {
            Some(Fault {
                kind,
                when: When::Before,
            }) => (Some(kind), None),
            Some(Fault {
                kind,
                when: When::After,
            }) => (None, Some(kind)),
            None => (None, None),
        };
        match before {
            Some(FaultKind::Delay(d)) => self.nap(d),
            Some(kind) => return self.fault_reply(kind),
            None => {}
        }
        let reply = answer(&mut self.lock(), &params);
        match after {
            Some(FaultKind::Delay(d)) => {
                self.nap(d);
                reply
            }
            Some(kind) => self.fault_reply(kind),
            None => reply,
        }
    }

    fn fault_reply(&self, kind: FaultKind) -> FakeReply {
        match kind {
            FaultKind::Status(status) => typed_reply(
                status,
                "text/html",
                format!(
                    "<html><head><title>{status}</title></head><body><center><h1>{status}</h1>\
                     </center><hr><center>fake gateway</center></body></html>"
                )
                .into_bytes(),
            ),
            FaultKind::Hang => {
                self.nap(HANG);
                FakeReply::no_answer()
            }
            FaultKind::NoAnswer | FaultKind::Delay(_) => FakeReply::no_answer(),
        }
    }
}
