//! `GET /metrics`: Prometheus text format, rendered by hand.
//!
//! Besides the cache and limiter figures, the API counts every request by
//! route and status, with a latency histogram by route ([`HttpMetrics`],
//! recorded by the [`HttpLayer`] middleware), every key check by its result
//! code ([`Verifications`]) and the usage flushes. Recording is a few
//! uncontended atomic additions: each server worker thread has its own
//! counters per route (found in a map of its own by the route's pattern), and
//! `/metrics` adds them up.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::{web, Error, HttpRequest, HttpResponse};

use crate::access::Refusal;
use crate::striped::Striped;
use crate::{ApiError, AppState};

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let cache = &state.cache;
    let lines = [
        (
            "keyledger_key_cache_hits_total",
            "counter",
            "Key lookups answered from memory.",
            cache.hits.sum(),
        ),
        (
            "keyledger_key_cache_database_lookups_total",
            "counter",
            "Key lookups that queried the database (cache misses).",
            cache.database_lookups.load(Ordering::Relaxed),
        ),
        (
            "keyledger_key_cache_single_flight_waits_total",
            "counter",
            "Key lookups that waited for another lookup's database read of the same key (single flight) instead of querying themselves.",
            cache.single_flight_waits.load(Ordering::Relaxed),
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
        (
            "keyledger_usage_flushes_total",
            "counter",
            "Usage flushes run (each appends the counts gathered since the last one).",
            state.usage.flushes.load(Ordering::Relaxed),
        ),
        (
            "keyledger_usage_flushed_events_total",
            "counter",
            "key.used events appended by usage flushes.",
            state.usage.flushed_events.load(Ordering::Relaxed),
        ),
        (
            "keyledger_usage_flush_last_size",
            "gauge",
            "key.used events the latest usage flush appended.",
            state.usage.last_flush_size.load(Ordering::Relaxed),
        ),
        (
            "keyledger_usage_flush_failures_total",
            "counter",
            "key.used events a flush could not append (their counts are kept for the next flush).",
            state.usage.flush_failures.load(Ordering::Relaxed),
        ),
        (
            "keyledger_key_creation_groups_total",
            "counter",
            "Group statements that committed key creations (one round trip each).",
            state.creations.groups.load(Ordering::Relaxed),
        ),
    ];
    let mut text = String::with_capacity(16 * 1024);
    for (name, kind, help, value) in lines {
        let _ = write!(text, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n");
    }
    let _ = write!(
        text,
        "# HELP keyledger_key_creations_total Keys created, by how they were committed: with others in a group \
         statement, or in a transaction of their own.\n# TYPE keyledger_key_creations_total counter\n\
         keyledger_key_creations_total{{commit=\"group\"}} {}\nkeyledger_key_creations_total{{commit=\"single\"}} {}\n",
        state.creations.grouped.load(Ordering::Relaxed),
        state.creations.single.load(Ordering::Relaxed),
    );
    state.verifications.render(&mut text);
    state.http.render(&mut text);
    for source in &state.extra_metrics {
        source(&mut text);
    }
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(text)
}

/// The result codes of a key check: `/v1/verify`'s codes, plus the errors a
/// check can end in before a key is found.
pub const VERIFICATION_CODES: [&str; 11] = [
    "VALID",
    "NOT_FOUND",
    "INACTIVE",
    "EXPIRED",
    "ENVIRONMENT_MISMATCH",
    "INSUFFICIENT_SCOPE",
    "IP_NOT_ALLOWED",
    "RATE_LIMITED",
    "TOO_MANY_FAILED_ATTEMPTS",
    "UNAVAILABLE",
    "ERROR",
];

/// `/v1/verify`'s code for a verdict.
pub fn verdict_code(verdict: &Result<(), Refusal>) -> &'static str {
    match verdict {
        Ok(()) => "VALID",
        Err(Refusal::RateLimited) => "RATE_LIMITED",
        Err(Refusal::Inactive) => "INACTIVE",
        Err(Refusal::Expired) => "EXPIRED",
        Err(Refusal::IpNotAllowed) => "IP_NOT_ALLOWED",
        Err(Refusal::EnvironmentMismatch) => "ENVIRONMENT_MISMATCH",
        Err(Refusal::InsufficientScope(_)) => "INSUFFICIENT_SCOPE",
    }
}

/// Key checks by result code (`keyledger_verifications_total{code}`): every
/// decision of `/v1/verify`, `/v1/auth` and the management API's own key
/// check, which share one path (`access::check`).
#[derive(Default)]
pub struct Verifications {
    /// Each thread's counts ([`Striped`]: every check writes one).
    counts: Striped<[AtomicU64; VERIFICATION_CODES.len()]>,
}

impl Verifications {
    /// Counts one check that ended with `code` (one of [`VERIFICATION_CODES`]).
    pub fn record(&self, code: &'static str) {
        let index = VERIFICATION_CODES
            .iter()
            .position(|c| *c == code)
            .unwrap_or(VERIFICATION_CODES.len() - 1);
        self.counts.mine()[index].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts the outcome of a check: a verdict, `NOT_FOUND`, or the error
    /// it ended in.
    pub fn record_result<T>(&self, result: &Result<Option<T>, ApiError>, verdict: impl Fn(&T) -> &'static str) {
        self.record(match result {
            Ok(Some(checked)) => verdict(checked),
            Ok(None) => "NOT_FOUND",
            Err(ApiError::TooManyFailedAttempts { .. }) => "TOO_MANY_FAILED_ATTEMPTS",
            Err(ApiError::Unavailable) => "UNAVAILABLE",
            Err(_) => "ERROR",
        });
    }

    pub fn count(&self, code: &str) -> u64 {
        VERIFICATION_CODES
            .iter()
            .position(|c| *c == code)
            .map_or(0, |i| self.counted(i))
    }

    fn counted(&self, index: usize) -> u64 {
        self.counts
            .all()
            .map(|counts| counts[index].load(Ordering::Relaxed))
            .sum()
    }

    pub fn render(&self, out: &mut String) {
        out.push_str(
            "# HELP keyledger_verifications_total Key checks (/v1/verify, /v1/auth, the management API) by result code.\n\
             # TYPE keyledger_verifications_total counter\n",
        );
        for (index, code) in VERIFICATION_CODES.iter().enumerate() {
            let _ = writeln!(
                out,
                "keyledger_verifications_total{{code=\"{code}\"}} {}",
                self.counted(index)
            );
        }
    }
}

/// Upper bounds of the request duration histogram, in seconds.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// The same bounds in nanoseconds (what a request's duration is compared with).
const BUCKET_NANOS: [u64; 14] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];
/// The route label of a request no route matched.
pub const UNMATCHED: &str = "unmatched";
const FIRST_STATUS: u16 = 100;
const STATUSES: usize = 500;

/// One route's counts, on one server worker thread.
struct RouteStats {
    route: Box<str>,
    /// By status code − 100.
    statuses: Box<[AtomicU64]>,
    /// Requests per bucket (not cumulative); the last is above every bound.
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl RouteStats {
    fn new(route: &str) -> RouteStats {
        RouteStats {
            route: route.into(),
            statuses: (0..STATUSES).map(|_| AtomicU64::new(0)).collect(),
            buckets: Default::default(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    fn record(&self, status: u16, elapsed: Duration) {
        let status = usize::from(status.clamp(FIRST_STATUS, FIRST_STATUS + STATUSES as u16 - 1) - FIRST_STATUS);
        self.statuses[status].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = BUCKET_NANOS
            .iter()
            .position(|&le| nanos <= le)
            .unwrap_or(BUCKET_NANOS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// Requests by route and status, and their durations by route
/// (`keyledger_http_requests_total{route,status}`,
/// `keyledger_http_request_duration_seconds{route}`). The route is the
/// pattern that matched (`/v1/keys/{id}`), never the path: the label set
/// is bounded by the routes there are.
#[derive(Default)]
pub struct HttpMetrics {
    /// Every worker thread's counters; taken only when a thread sees a
    /// route for the first time, and by `/metrics`.
    all: Mutex<Vec<Arc<RouteStats>>>,
}

/// One route's figures, summed over the worker threads.
#[derive(Default)]
struct RouteTotals {
    statuses: BTreeMap<u16, u64>,
    buckets: [u64; DURATION_BUCKETS.len() + 1],
    sum_nanos: u64,
}

impl HttpMetrics {
    fn register(&self, route: &str) -> Arc<RouteStats> {
        let stats = Arc::new(RouteStats::new(route));
        self.all.lock().expect("metrics lock").push(stats.clone());
        stats
    }

    /// Requests answered so far on `route` with `status`.
    pub fn requests(&self, route: &str, status: u16) -> u64 {
        self.totals()
            .get(route)
            .map_or(0, |t| t.statuses.get(&status).copied().unwrap_or(0))
    }

    fn totals(&self) -> BTreeMap<Box<str>, RouteTotals> {
        let all = self.all.lock().expect("metrics lock").clone();
        let mut totals: BTreeMap<Box<str>, RouteTotals> = BTreeMap::new();
        for stats in all {
            let total = totals.entry(stats.route.clone()).or_default();
            for (index, count) in stats.statuses.iter().enumerate() {
                let count = count.load(Ordering::Relaxed);
                if count > 0 {
                    *total.statuses.entry(FIRST_STATUS + index as u16).or_default() += count;
                }
            }
            for (sum, count) in total.buckets.iter_mut().zip(&stats.buckets) {
                *sum += count.load(Ordering::Relaxed);
            }
            total.sum_nanos += stats.sum_nanos.load(Ordering::Relaxed);
        }
        totals
    }

    pub fn render(&self, out: &mut String) {
        let totals = self.totals();
        out.push_str(
            "# HELP keyledger_http_requests_total HTTP requests answered, by route pattern and status code.\n\
             # TYPE keyledger_http_requests_total counter\n",
        );
        for (route, total) in &totals {
            for (status, count) in &total.statuses {
                let _ = writeln!(
                    out,
                    "keyledger_http_requests_total{{route=\"{}\",status=\"{status}\"}} {count}",
                    escape(route)
                );
            }
        }
        out.push_str(
            "# HELP keyledger_http_request_duration_seconds Time to answer an HTTP request (until the response starts), by route pattern.\n\
             # TYPE keyledger_http_request_duration_seconds histogram\n",
        );
        for (route, total) in &totals {
            let route = escape(route);
            let mut cumulative = 0;
            for (le, count) in DURATION_BUCKETS.iter().zip(&total.buckets) {
                cumulative += count;
                let _ = writeln!(
                    out,
                    "keyledger_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{le}\"}} {cumulative}"
                );
            }
            cumulative += total.buckets[DURATION_BUCKETS.len()];
            let _ = writeln!(
                out,
                "keyledger_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {cumulative}\n\
                 keyledger_http_request_duration_seconds_sum{{route=\"{route}\"}} {}\n\
                 keyledger_http_request_duration_seconds_count{{route=\"{route}\"}} {cumulative}",
                total.sum_nanos as f64 / 1e9
            );
        }
    }
}

/// A label value as the text format writes it.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The middleware recording [`HttpMetrics`]; the outermost one, so every
/// answer counts (the query-string refusals included).
pub struct HttpLayer(pub Arc<HttpMetrics>);

impl<S, B> Transform<S, ServiceRequest> for HttpLayer
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
{
    type Response = ServiceResponse<B>;
    type Error = Error;
    type Transform = HttpRecording<S>;
    type InitError = ();
    type Future = Ready<Result<HttpRecording<S>, ()>>;

    /// Called once per server worker thread: the recorder is that thread's.
    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(HttpRecording {
            service,
            recorder: Rc::new(Recorder {
                metrics: self.0.clone(),
                routes: RefCell::default(),
            }),
        }))
    }
}

/// The metrics label of a hot route, given as its resource's data: read
/// without building the route's pattern for every request.
#[derive(Debug, Clone, Copy)]
pub struct RouteLabel(pub &'static str);

/// One worker thread's route counters, by route pattern.
struct Recorder {
    metrics: Arc<HttpMetrics>,
    routes: RefCell<HashMap<Box<str>, Arc<RouteStats>>>,
}

impl Recorder {
    fn record(&self, req: Option<&HttpRequest>, status: u16, elapsed: Duration) {
        // A hot route's label, given with its resource (`crate::hot_route`)
        // and present only when that resource answered; else the pattern of
        // the resource the router chose (a walk up a few nodes, built as a
        // new string), re-matched by path only for answers no resource gave.
        let label = req.and_then(HttpRequest::app_data::<RouteLabel>).map(|label| label.0);
        let pattern = if label.is_some() {
            None
        } else {
            req.and_then(HttpRequest::match_pattern)
        };
        let route = label.or(pattern.as_deref()).unwrap_or(UNMATCHED);
        let stats = self.routes.borrow().get(route).cloned();
        let stats = stats.unwrap_or_else(|| {
            let stats = self.metrics.register(route);
            self.routes.borrow_mut().insert(route.into(), stats.clone());
            stats
        });
        stats.record(status, elapsed);
    }
}

pub struct HttpRecording<S> {
    service: S,
    recorder: Rc<Recorder>,
}

impl<S, B> Service<ServiceRequest> for HttpRecording<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
{
    type Response = ServiceResponse<B>;
    type Error = Error;
    type Future = Recorded<S::Future>;

    actix_web::dev::forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        // The request is not kept here: the router needs it unshared.
        Recorded {
            inner: self.service.call(req),
            started: Instant::now(),
            recorder: self.recorder.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    pub struct Recorded<F> {
        #[pin]
        inner: F,
        started: Instant,
        recorder: Rc<Recorder>,
    }
}

impl<F, B> Future for Recorded<F>
where
    F: Future<Output = Result<ServiceResponse<B>, Error>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        let elapsed = this.started.elapsed();
        match &result {
            Ok(response) => this
                .recorder
                .record(Some(response.request()), response.status().as_u16(), elapsed),
            // An error that never became a response (the request is gone).
            Err(error) => {
                let status = error.as_response_error().status_code().as_u16();
                this.recorder.record(None, status, elapsed);
            }
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
    }

    #[test]
    fn durations_fall_in_the_first_bucket_that_holds_them_and_buckets_are_cumulative() {
        let metrics = HttpMetrics::default();
        // Two worker threads' counters for one route add up.
        let (one, two) = (metrics.register("/v1/auth"), metrics.register("/v1/auth"));
        one.record(204, Duration::from_micros(500));
        two.record(204, Duration::from_micros(501));
        two.record(401, Duration::from_secs(11));
        one.record(1000, Duration::ZERO);
        let mut text = String::new();
        metrics.render(&mut text);
        let bucket = |le: &str| {
            line(
                &text,
                &format!("keyledger_http_request_duration_seconds_bucket{{route=\"/v1/auth\",le=\"{le}\"}}"),
            )
        };
        assert_eq!(bucket("0.0005"), Some("2"));
        assert_eq!(bucket("0.001"), Some("3"));
        assert_eq!(bucket("10"), Some("3"));
        assert_eq!(bucket("+Inf"), Some("4"));
        assert_eq!(
            line(
                &text,
                "keyledger_http_request_duration_seconds_count{route=\"/v1/auth\"}"
            ),
            Some("4")
        );
        assert_eq!(
            line(&text, "keyledger_http_request_duration_seconds_sum{route=\"/v1/auth\"}"),
            Some("11.001001")
        );
        assert_eq!(metrics.requests("/v1/auth", 204), 2);
        assert_eq!(metrics.requests("/v1/auth", 401), 1);
        // A status outside 100..=599 is counted as 599, not dropped.
        assert_eq!(metrics.requests("/v1/auth", 599), 1);
    }

    #[test]
    fn every_verdict_has_a_code_of_its_own() {
        let verifications = Verifications::default();
        verifications.record_result::<()>(&Ok(None), |_| "VALID");
        verifications.record_result::<()>(&Err(ApiError::TooManyFailedAttempts { retry_after: 1 }), |_| "VALID");
        verifications.record_result::<()>(&Ok(Some(())), |_| "EXPIRED");
        for (code, count) in [
            ("NOT_FOUND", 1),
            ("TOO_MANY_FAILED_ATTEMPTS", 1),
            ("EXPIRED", 1),
            ("VALID", 0),
        ] {
            assert_eq!(verifications.count(code), count, "{code}");
        }
    }
}
