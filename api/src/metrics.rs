//! `GET /metrics`: Prometheus text format.

use std::sync::atomic::Ordering;

use actix_web::{web, HttpResponse};

use crate::AppState;

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let cache = &state.cache;
    let lines = [
        (
            "keyledger_key_cache_hits_total",
            "counter",
            "Key lookups answered from memory.",
            cache.hits.load(Ordering::Relaxed),
        ),
        (
            "keyledger_key_cache_database_lookups_total",
            "counter",
            "Key lookups that queried the database (cache misses).",
            cache.database_lookups.load(Ordering::Relaxed),
        ),
        (
            "keyledger_key_cache_entries",
            "gauge",
            "Entries in the key cache.",
            cache.len() as u64,
        ),
        (
            "keyledger_key_cache_outage_answers_total",
            "counter",
            "Verifications answered from the cache while the database could not confirm them (outage grace).",
            cache.outage_answers.load(Ordering::Relaxed),
        ),
        (
            "keyledger_database_down",
            "gauge",
            "1 while PostgreSQL is known to be unreachable.",
            u64::from(state.database.is_down()),
        ),
        (
            "keyledger_leak_reports_total",
            "counter",
            "Leak reports whose signature checked (POST /v1/leaks), whatever they held.",
            state.leak_reports.signed.load(Ordering::Relaxed),
        ),
        (
            "keyledger_leak_reports_refused_total",
            "counter",
            "Leak reports refused for a missing, unknown or wrong signature (401): forged, or a misconfigured sender.",
            state.leak_reports.refused.load(Ordering::Relaxed),
        ),
        (
            "keyledger_rate_limiter_subjects",
            "gauge",
            "Keys tracked by the rate limiter.",
            state.limiter.len() as u64,
        ),
    ];
    let mut text = String::new();
    for (name, kind, help, value) in lines {
        text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"));
    }
    for source in &state.extra_metrics {
        source(&mut text);
    }
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(text)
}
