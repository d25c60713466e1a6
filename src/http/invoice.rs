//! `GET /invoices/{id}`: a printable HTML invoice for its owner or an administrator,
//! authenticated with `Authorization: Bearer <access token>` like the API (and counted
//! against the same rate limits). 401 without valid credentials; 404 for an unknown
//! invoice and for someone else's alike, so ids can't be probed.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::auth::identity;
use crate::billing::model::InvoiceStatus;
use crate::billing::service::{self, Printable};
use crate::error::AppError;
use crate::graphql::caller::{self, client_info};
use crate::money::format_amount;
use crate::state::AppState;

pub async fn invoice_page(
    state: web::Data<AppState>,
    req: HttpRequest,
    id: web::Path<String>,
) -> HttpResponse {
    let client = client_info(&req, &state.settings.trusted_proxies);
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let credentials = identity::credentials(&state, authorization);
    let printable = async {
        let identity = caller::admit(&state, &credentials, &client).await?;
        identity.actor()?;
        // A malformed id is as unknown as any other.
        let id = Uuid::parse_str(&id).map_err(|_| AppError::not_found("invoice"))?;
        service::printable(&state, &identity, id).await
    }
    .await;
    match printable {
        Ok(p) => HttpResponse::Ok()
            .content_type("text/html; charset=utf-8")
            .insert_header((header::CACHE_CONTROL, "private, no-store"))
            .body(render(
                &p,
                &state.settings.platform_name,
                &state.settings.public_url,
            )),
        Err(e) => refusal(e),
    }
}

/// An error as a small plain-text page with the matching status.
fn refusal(e: AppError) -> HttpResponse {
    let mut builder = match &e {
        AppError::Unauthenticated(_) => {
            let mut b = HttpResponse::Unauthorized();
            b.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            b
        }
        AppError::Forbidden(_) => HttpResponse::Forbidden(),
        AppError::NotFound(_) => HttpResponse::NotFound(),
        AppError::RateLimited { retry_after_secs } => {
            let mut b = HttpResponse::TooManyRequests();
            b.insert_header((
                header::RETRY_AFTER,
                HeaderValue::from_str(&retry_after_secs.to_string())
                    .expect("digits are a valid header"),
            ));
            b
        }
        AppError::Internal(cause) => {
            tracing::error!(error = %cause, "printing an invoice failed");
            HttpResponse::InternalServerError()
        }
        _ => HttpResponse::BadRequest(),
    };
    builder
        .content_type("text/plain; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "private, no-store"))
        .body(e.message())
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn money(minor: i64, currency: &str) -> String {
    format!("{} {}", format_amount(minor, currency), escape(currency))
}

fn date(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d").to_string()
}

fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// The invoice as a self-contained HTML page (inline styles, nothing loaded).
pub fn render(p: &Printable, platform_name: &str, public_url: &str) -> String {
    let i = &p.invoice;
    let cur = &i.currency;
    let status = match i.status {
        InvoiceStatus::Paid => match i.paid_at {
            Some(at) => format!("Paid {}", time(at)),
            None => "Paid".into(),
        },
        InvoiceStatus::Open => "Open: awaiting payment".into(),
        InvoiceStatus::Void => "Void".into(),
    };
    let period = match (i.period_start, i.period_end) {
        (Some(s), Some(e)) => format!(
            "<tr><th>Period</th><td>{} to {}</td></tr>",
            date(s),
            date(e)
        ),
        _ => String::new(),
    };
    let subscription = p
        .subscription_name
        .as_deref()
        .map(|n| format!("<tr><th>Subscription</th><td>{}</td></tr>", escape(n)))
        .unwrap_or_default();
    let lines: String = p
        .lines
        .iter()
        .map(|l| {
            format!(
                "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>\n",
                escape(&l.description),
                l.quantity,
                money(l.unit_price, cur),
                money(l.amount, cur)
            )
        })
        .collect();
    let tax = if i.tax_rate_bp > 0 || i.tax != 0 {
        format!(
            "<tr><td colspan=\"3\">{} ({}.{:02} %)</td><td class=\"n\">{}</td></tr>\n",
            escape(i.tax_name.as_deref().unwrap_or("Tax")),
            i.tax_rate_bp / 100,
            i.tax_rate_bp % 100,
            money(i.tax, cur)
        )
    } else {
        String::new()
    };
    let platform = escape(platform_name);
    let url = escape(public_url);
    let number = escape(&i.number);
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Invoice {number} · {platform}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 48rem; color: #111; }}
table {{ border-collapse: collapse; width: 100%; margin: 1rem 0; }}
th, td {{ text-align: left; padding: .35rem .5rem; vertical-align: top; }}
.lines th {{ border-bottom: 2px solid #111; }}
.lines td {{ border-bottom: 1px solid #ddd; }}
.n {{ text-align: right; white-space: nowrap; }}
.total td {{ font-weight: bold; border-top: 2px solid #111; }}
header {{ display: flex; justify-content: space-between; align-items: baseline; }}
@media print {{ body {{ margin: 0; }} }}
</style>
</head>
<body>
<header>
<div><h1>{platform}</h1><div>{url}</div></div>
<div><h2>Invoice {number}</h2><div class="status">{status}</div></div>
</header>
<table class="meta">
<tr><th>Invoice number</th><td>{number}</td></tr>
<tr><th>Issued</th><td>{issued}</td></tr>
{period}<tr><th>Billed to</th><td>{customer}<br>{email}</td></tr>
{subscription}<tr><th>Status</th><td>{status}</td></tr>
</table>
<table class="lines">
<tr><th>Description</th><th class="n">Quantity</th><th class="n">Unit price</th><th class="n">Amount</th></tr>
{lines}<tr><td colspan="3">Subtotal</td><td class="n">{subtotal}</td></tr>
{tax}<tr class="total"><td colspan="3">Total</td><td class="n">{total}</td></tr>
</table>
<footer>{platform} · {url}</footer>
</body>
</html>
"#,
        status = escape(&status),
        issued = time(i.issued_at),
        customer = escape(&p.customer.name),
        email = escape(&p.customer.email),
        subtotal = money(i.subtotal, cur),
        total = money(i.total, cur),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            escape(r#"<script>alert('x' & "y")</script>"#),
            "&lt;script&gt;alert(&#39;x&#39; &amp; &quot;y&quot;)&lt;/script&gt;"
        );
    }
}
