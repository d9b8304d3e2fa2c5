//! `GET /v1/alert-recipients/confirm?token=…`: the link in an alert
//! recipient's confirmation email. A person's browser follows it, so it
//! answers a small HTML page, needs no API key (the token is the proof,
//! see `keyledger_events::domain::confirmation`) and appends
//! `org.alert_recipient_confirmed` with actor `alert-recipient`. A forged
//! or damaged token answers 400; one that no longer applies (expired,
//! replaced, address removed) 410, saying why; a link followed again, or
//! for an address confirmed meanwhile, 200 saying it already is.
//!
//! Known limitation: the contract (docs/api.md) makes the link a `GET`, so a mail scanner that
//! fetches every link of an incoming email confirms the address for its user.

use std::collections::HashMap;

use actix_web::{http::header, http::StatusCode, web, HttpRequest, HttpResponse, ResponseError};
use keyledger_events::domain::{confirmation::Confirmation, org, DomainError, Org, OrgCommand};
use keyledger_events::handler::{self, HandlerError, Outcome};
use keyledger_events::log::EventMeta;

use crate::clock;
use crate::{error::ApiError, request_id, AppState};

pub async fn confirm(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let query = web::Query::<HashMap<String, String>>::from_query(req.query_string()).ok();
    let token = query.as_ref().and_then(|q| q.get("token"));
    let Some(confirmation) = token.and_then(|t| Confirmation::verify(t, &state.hash_key)) else {
        return invalid();
    };
    let email = &confirmation.email;
    match append_confirmation(&state, &confirmation).await {
        Ok(outcome) => {
            let name = outcome.state.as_ref().map_or("", |org| org.name.as_str());
            if outcome.events.is_empty() {
                page(
                    StatusCode::OK,
                    "Address already confirmed",
                    &format!(
                        "{email} was already confirmed: it receives the API key alerts of {name}. Nothing more to do."
                    ),
                )
            } else {
                page(
                    StatusCode::OK,
                    "Address confirmed",
                    &format!("{email} is confirmed: it now receives the API key alerts of {name}."),
                )
            }
        }
        Err(HandlerError::Domain(DomainError::Conflict(why))) => {
            page(StatusCode::GONE, "This link no longer works", &why)
        }
        Err(HandlerError::Domain(DomainError::NotFound)) => invalid(),
        Err(HandlerError::Concurrency) => page(
            StatusCode::CONFLICT,
            "Please try again",
            "The organization's settings kept changing at the same moment; open the link again.",
        ),
        Err(other) => ApiError::from(other).error_response(),
    }
}

/// Confirms; a concurrent change of the organization is retried once (a
/// person clicked a link: there is nobody to tell to retry but them).
async fn append_confirmation(state: &AppState, confirmation: &Confirmation) -> Result<Outcome<Org>, HandlerError> {
    let stream = org::stream_id(confirmation.org_id);
    let mut retried = false;
    loop {
        let meta = EventMeta {
            actor: "alert-recipient".into(),
            request_id: Some(request_id::current()),
            occurred_at: clock::now(),
        };
        let command = OrgCommand::ConfirmRecipient {
            email: confirmation.email.clone(),
            requested_at: confirmation.requested_at,
        };
        match handler::execute::<Org>(&state.pool, &stream, command, &meta, |_| Ok(())).await {
            Err(HandlerError::Concurrency) if !retried => retried = true,
            result => return result,
        }
    }
}

fn invalid() -> HttpResponse {
    page(
        StatusCode::BAD_REQUEST,
        "This link is not valid",
        "This confirmation link is not valid: open the link exactly as the email has it (some mail \
         programs break long links; copy the whole link into the address bar).",
    )
}

/// A page that loads nothing, is never cached and never passes its address
/// (which holds the token) on as a referrer.
fn page(status: StatusCode, title: &str, message: &str) -> HttpResponse {
    let html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>{title} · keyledger</title></head>\n\
         <body><h1>{title}</h1>\n<p>{}</p></body></html>\n",
        escape(message),
        title = escape(title)
    );
    HttpResponse::build(status)
        .insert_header((header::CONTENT_TYPE, "text/html; charset=utf-8"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; frame-ancestors 'none'",
        ))
        .body(html)
}

/// `text` safe in HTML text (organization names are tenant-typed).
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
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

#[cfg(test)]
mod tests {
    #[test]
    fn tenant_text_is_escaped_in_pages() {
        assert_eq!(
            super::escape("<script>alert('x')</script> & \"co\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;co&quot;"
        );
    }
}
