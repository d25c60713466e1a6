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
use crate::state::AppState;
use crate::users::service::PasswordInput;

type Form = web::Form<HashMap<String, String>>;
type Query = web::Query<HashMap<String, String>>;

/// What a page shows.
#[derive(Default)]
struct Page<'a> {
    title: &'a str,
    error: Option<String>,
    done: Option<&'a str>,
    /// `verify`, `reset` or `request`.
    form: Option<&'a str>,
    token: Option<&'a str>,
}

fn page(state: &AppState, status: StatusCode, p: Page) -> HttpResponse {
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
                title => p.title,
                error => p.error,
                done => p.done,
                form => p.form,
                token => p.token,
            })
        })
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "rendering an account page");
            "<!doctype html><title>Error</title><p>Something went wrong.</p>".into()
        });
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ))
        .body(html)
}

/// What the person sees of a refusal: the error's own message for their input, a generic
/// one for anything internal.
fn shown(e: &AppError) -> (StatusCode, String) {
    match e {
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
    }
}

/// The per-address request limit every page shares with the API.
/// A refusal is a whole page (boxed: it is much bigger than the client).
fn admitted(
    state: &AppState,
    req: &HttpRequest,
) -> Result<crate::state::ClientInfo, Box<HttpResponse>> {
    let client = client_info(req, &state.settings.trusted_proxies);
    match state.limits.per_ip.hit(&address_key(client.ip)) {
        Ok(()) => Ok(client),
        Err(secs) => {
            let (status, error) = shown(&AppError::rate_limited(secs));
            Err(Box::new(page(
                state,
                status,
                Page {
                    title: "Slow down",
                    error: Some(error),
                    ..Default::default()
                },
            )))
        }
    }
}

pub async fn verify_form(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: Query,
) -> HttpResponse {
    if let Err(refused) = admitted(&state, &req) {
        return *refused;
    }
    match query.get("token") {
        Some(token) => page(
            &state,
            StatusCode::OK,
            Page {
                title: "Confirm your email address",
                form: Some("verify"),
                token: Some(token),
                ..Default::default()
            },
        ),
        None => page(
            &state,
            StatusCode::BAD_REQUEST,
            Page {
                title: "Confirm your email address",
                error: Some(
                    "This link is incomplete: open the whole link from the message.".into(),
                ),
                ..Default::default()
            },
        ),
    }
}

pub async fn verify(state: web::Data<AppState>, req: HttpRequest, form: Form) -> HttpResponse {
    if let Err(refused) = admitted(&state, &req) {
        return *refused;
    }
    let token = form.get("token").map(String::as_str).unwrap_or("");
    match recovery::verify_email(&state, token).await {
        Ok(()) => page(
            &state,
            StatusCode::OK,
            Page {
                title: "Address confirmed",
                done: Some(
                    "Thank you: your email address is confirmed. You can close this page and sign in.",
                ),
                ..Default::default()
            },
        ),
        Err(e) => {
            let (status, error) = shown(&e);
            page(
                &state,
                status,
                Page {
                    title: "Confirm your email address",
                    error: Some(error),
                    ..Default::default()
                },
            )
        }
    }
}

pub async fn reset_form(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: Query,
) -> HttpResponse {
    if let Err(refused) = admitted(&state, &req) {
        return *refused;
    }
    match query.get("token") {
        Some(token) => page(
            &state,
            StatusCode::OK,
            Page {
                title: "Choose a new password",
                form: Some("reset"),
                token: Some(token),
                ..Default::default()
            },
        ),
        None => page(
            &state,
            StatusCode::OK,
            Page {
                title: "Reset your password",
                form: Some("request"),
                ..Default::default()
            },
        ),
    }
}

/// With a token: sets the new password. With an email: asks for a link.
pub async fn reset(state: web::Data<AppState>, req: HttpRequest, form: Form) -> HttpResponse {
    let client = match admitted(&state, &req) {
        Ok(client) => client,
        Err(refused) => return *refused,
    };
    if let Some(email) = form.get("email") {
        return match recovery::request_password_reset(&state, email, &client).await {
            Ok(()) => page(
                &state,
                StatusCode::OK,
                Page {
                    title: "Check your mail",
                    done: Some(
                        "If this address has an account, a link to reset its password is on its way. It works once, within an hour.",
                    ),
                    ..Default::default()
                },
            ),
            Err(e) => {
                let (status, error) = shown(&e);
                page(
                    &state,
                    status,
                    Page {
                        title: "Reset your password",
                        error: Some(error),
                        form: Some("request"),
                        ..Default::default()
                    },
                )
            }
        };
    }
    let token = form.get("token").map(String::as_str).unwrap_or("");
    let new_password = form.get("password").cloned().unwrap_or_default();
    match recovery::reset_password(&state, token, PasswordInput { new_password }, &client).await {
        Ok(()) => page(
            &state,
            StatusCode::OK,
            Page {
                title: "Password changed",
                done: Some(
                    "Your new password is set, and every session was signed out. Sign in with the new password.",
                ),
                ..Default::default()
            },
        ),
        // A weak password: the form again, with the same (still unused) token.
        Err(e @ AppError::BadUserInput { .. }) if !refers_to_token(&e) => {
            let (status, error) = shown(&e);
            page(
                &state,
                status,
                Page {
                    title: "Choose a new password",
                    error: Some(error),
                    form: Some("reset"),
                    token: Some(token),
                    ..Default::default()
                },
            )
        }
        Err(e) => {
            let (status, error) = shown(&e);
            page(
                &state,
                status,
                Page {
                    title: "Choose a new password",
                    error: Some(error),
                    ..Default::default()
                },
            )
        }
    }
}

fn refers_to_token(e: &AppError) -> bool {
    matches!(e, AppError::BadUserInput { fields, .. } if fields.contains_key("token"))
}
