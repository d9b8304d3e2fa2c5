//! End-to-end tests: the real app (in process, on a real port) and the real
//! binary, against a real PostgreSQL with a fresh database per test.

mod support;

mod alerts;
mod allowlist;
mod binary;
mod broker;
mod deployment;
mod forward_auth;
mod fuzz;
mod hot_path;
mod idempotency;
mod isolation;
mod kafka;
mod keys;
mod leaks;
mod metrics;
mod nginx;
mod openapi;
mod outage;
mod portal;
mod private_pg;
mod projection;
mod recipients;
mod smtp;
mod surfaces;
mod validation;
mod verify;
mod webhooks;
