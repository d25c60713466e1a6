//! Small pages that complete the mail links when there is no customer portal
//! (`PODIUM_PORTAL_URL` unset points the links here): `/verify-email?token=...` and
//! `/reset-password?token=...`, plus `/reset-password` alone to ask for a link.
//!
//! Opening a link changes nothing: the page shows a button that POSTs the token, so that
//! mail scanners that fetch links don't use them up. Pages are never cached, send no
//! referrer (the token is in the URL) and load nothing from elsewhere.

use std::collections::HashMap;
use std::sync::OnceLock;

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use minijinja::{Environment, context};

use crate::auth::recovery;
use crate::error::AppError;
use crate::graphql::caller::client_info;
use crate::ratelimit::address_key;
use crate::state::{AppState, ClientInfo};
use crate::users::service::PasswordInput;

type Form = web::Form<HashMap<String, String>>;
type Query = web::Query<HashMap<String, String>>;

const VERIFY: &str = "Confirm your email address";
const CHOOSE: &str = "Choose a new password";
const REQUEST: &str = "Reset your password";

/// What a page shows.
struct Page<'a> {
    status: StatusCode,
    title: &'a str,
    error: Option<String>,
    done: Option<&'a str>,
    /// `verify`, `reset` or `request`.
    form: Option<&'a str>,
    token: Option<&'a str>,
}

impl<'a> Page<'a> {
    fn new(title: &'a str) -> Self {
        Page {
            status: StatusCode::OK,
            title,
            error: None,
            done: None,
            form: None,
            token: None,
        }
    }

    fn form(mut self, form: &'a str, token: Option<&'a str>) -> Self {
        self.form = Some(form);
        self.token = token;
        self
    }

    fn done(mut self, text: &'a str) -> Self {
        self.done = Some(text);
        self
    }

    /// What the person sees of a refusal: the error's own message for their input, a
    /// generic one for anything internal.
    fn refused(mut self, e: &AppError) -> Self {
        let (status, error) = match e {
            AppError::BadUserInput { fields, message } => (
                StatusCode::BAD_REQUEST,
                fields
                    .iter()
                    .next()
                    .map(|(field, messages)| {
                        let subject = match field.as_str() {
                            "token" => "This link",
                            "email" => "The email address",
                            _ => "The new password",
                        };
                        format!("{subject} {}.", messages.join("; "))
                    })
                    .unwrap_or_else(|| message.clone()),
            ),
            AppError::RateLimited { retry_after_secs } => (
                StatusCode::TOO_MANY_REQUESTS,
                format!("Too many requests: try again in {retry_after_secs} s."),
            ),
            AppError::Forbidden(m) => (StatusCode::FORBIDDEN, m.clone()),
            _ => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong on our side: please try again in a moment.".into(),
            ),
        };
        self.status = status;
        self.error = Some(error);
        self
    }

    fn render(self, state: &AppState) -> HttpResponse {
        static ENV: OnceLock<Environment<'static>> = OnceLock::new();
        let env = ENV.get_or_init(|| {
            let mut env = Environment::new();
            env.add_template(
                "account.html",
                include_str!("../../templates/pages/account.html"),
            )
            .expect("the account page template");
            env
        });
        let html = env
            .get_template("account.html")
            .and_then(|t| {
                t.render(context! {
                    platform => &state.settings.platform_name,
                    portal_url => &state.settings.mail.portal_url,
                    title => self.title,
                    error => self.error,
                    done => self.done,
                    form => self.form,
                    token => self.token,
                })
            })
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "rendering an account page");
                "<!doctype html><title>Error</title><p>Something went wrong.</p>".into()
            });
        HttpResponse::build(self.status)
            .content_type("text/html; charset=utf-8")
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .insert_header((
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ))
            .body(html)
    }
}

/// The per-address request limit every page shares with the API; a refusal is a whole
/// page (boxed: it is much bigger than the client).
fn admitted(state: &AppState, req: &HttpRequest) -> Result<ClientInfo, Box<HttpResponse>> {
    let client = client_info(req, &state.settings.trusted_proxies);
    state
        .limits
        .per_ip
        .hit(&address_key(client.ip))
        .map(|()| client)
        .map_err(|secs| {
            let slow_down = Page::new("Slow down").refused(&AppError::rate_limited(secs));
            Box::new(slow_down.render(state))
        })
}

pub async fn verify_form(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: Query,
) -> HttpResponse {
    if let Err(refused) = admitted(&state, &req) {
        return *refused;
    }
    let page = match query.get("token") {
        Some(token) => Page::new(VERIFY).form("verify", Some(token)),
        None => Page::new(VERIFY).refused(&AppError::field(
            "token",
            "is incomplete: open the whole link from the message",
        )),
    };
    page.render(&state)
}

pub async fn verify(state: web::Data<AppState>, req: HttpRequest, form: Form) -> HttpResponse {
    if let Err(refused) = admitted(&state, &req) {
        return *refused;
    }
    let token = form.get("token").map(String::as_str).unwrap_or("");
    let page = match recovery::verify_email(&state, token).await {
        Ok(()) => Page::new("Address confirmed").done(
            "Thank you: your email address is confirmed. You can close this page and sign in.",
        ),
        Err(e) => Page::new(VERIFY).refused(&e),
    };
    page.render(&state)
}

pub async fn reset_form(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: Query,
) -> HttpResponse {
    if let Err(refused) = admitted(&state, &req) {
        return *refused;
    }
    let page = match query.get("token") {
        Some(token) => Page::new(CHOOSE).form("reset", Some(token)),
        None => Page::new(REQUEST).form("request", None),
    };
    page.render(&state)
}

/// With a token: sets the new password. With an email: asks for a link.
pub async fn reset(state: web::Data<AppState>, req: HttpRequest, form: Form) -> HttpResponse {
    let client = match admitted(&state, &req) {
        Ok(client) => client,
        Err(refused) => return *refused,
    };
    if let Some(email) = form.get("email") {
        let page = match recovery::request_password_reset(&state, email, &client).await {
            Ok(()) => Page::new("Check your mail").done(
                "If this address has an account, a link to reset its password is on its way. It works once, within an hour.",
            ),
            Err(e) => Page::new(REQUEST).form("request", None).refused(&e),
        };
        return page.render(&state);
    }
    let token = form.get("token").map(String::as_str).unwrap_or("");
    let new_password = form.get("password").cloned().unwrap_or_default();
    let page = match recovery::reset_password(&state, token, PasswordInput { new_password }, &client)
        .await
    {
        Ok(()) => Page::new("Password changed").done(
            "Your new password is set, and every session was signed out. Sign in with the new password.",
        ),
        // A weak password: the form again, with the same (still unused) token.
        Err(e @ AppError::BadUserInput { .. }) if !refers_to_token(&e) => {
            Page::new(CHOOSE).form("reset", Some(token)).refused(&e)
        }
        Err(e) => Page::new(CHOOSE).refused(&e),
    };
    page.render(&state)
}

fn refers_to_token(e: &AppError) -> bool {
    matches!(e, AppError::BadUserInput { fields, .. } if fields.contains_key("token"))
}
