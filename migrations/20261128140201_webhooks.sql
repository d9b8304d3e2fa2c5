-- Outbound webhooks: the endpoints an organization registers, and one row per
-- (event, endpoint) delivery — written before anything is sent, like alerts —
-- with one row per attempt (the delivery log). Endpoints are rows, not events:
-- their signing secret must never enter the log (which is published to Kafka
-- and kept forever), and they configure delivery rather than govern keys.
create table webhook_endpoints (
    -- 'wh_' + a UUIDv7 in Crockford base32 (sorts by creation).
    id text primary key,
    org_id text not null,
    url text not null,
    -- Event types ('key.deactivated', …) or the one element '*'.
    events text[] not null,
    description text not null default '',
    -- The signing secret ('whsec_…'), encrypted (ChaCha20-Poly1305) with a key
    -- derived from KEYLEDGER_HASH_KEY, bound to the endpoint's id: a copy of
    -- the database alone cannot sign. The nonce is stored with it.
    secret_nonce bytea not null,
    secret_sealed bytea not null,
    disabled boolean not null default false,
    -- Why it is disabled: 'user' (PATCH disabled=true) or 'failing' (5 days
    -- of failed attempts); null while enabled.
    disabled_reason text,
    -- The first failed attempt since the last success (null: not failing).
    -- 5 days of failure from here disable the endpoint.
    failing_since timestamptz,
    created_at timestamptz not null,
    updated_at timestamptz not null,
    -- Who created and who last changed it (an admin key id, 'portal:<user>').
    created_by text not null,
    updated_by text not null
);

-- An organization's endpoints, newest first (the list and the quota count).
create index webhook_endpoints_by_org on webhook_endpoints (org_id, id desc);

create table webhook_deliveries (
    -- 'whd_' + UUIDv7.
    id text primary key,
    endpoint_id text not null references webhook_endpoints (id) on delete cascade,
    -- The event delivered: `webhook-id` is its event_id; the body is built
    -- from the log when sent, so it is the same on every attempt.
    event_id uuid not null,
    event_type text not null,
    -- The delivery's place in its endpoint's queue: deliveries are made in
    -- log order (the worker inserts them as it reads the log), replays after
    -- them; an endpoint's deliveries are sent one at a time in this order.
    seq bigserial not null,
    -- True for a delivery made by POST /v1/webhooks/{id}/replay.
    replay boolean not null default false,
    -- 'pending', 'succeeded' or 'failed' (retried for about a day).
    status text not null default 'pending',
    attempts int not null default 0,
    -- A pending delivery is tried once this time has passed: a claim pushes it
    -- ahead (a lease, so other workers leave it alone without a transaction
    -- held open during the request), a failed attempt by the backoff.
    next_attempt_at timestamptz not null,
    first_attempt_at timestamptz,
    last_attempt_at timestamptz,
    last_status_code int,
    last_error text,
    created_at timestamptz not null
);

-- Each event reaches each endpoint once, whichever worker replica reads it;
-- a replay is a new delivery of its own.
create unique index webhook_deliveries_once on webhook_deliveries (endpoint_id, event_id) where not replay;
-- The senders' queue: each endpoint's oldest pending delivery, when due.
create index webhook_deliveries_pending on webhook_deliveries (endpoint_id, seq) where status = 'pending';
create index webhook_deliveries_due on webhook_deliveries (next_attempt_at) where status = 'pending';
-- The delivery log: one endpoint's deliveries, newest first.
create index webhook_deliveries_log on webhook_deliveries (endpoint_id, id desc);

-- Every attempt of a delivery: when, the answer's status code (null: no
-- answer), the error in words, how long it took.
create table webhook_attempts (
    delivery_id text not null references webhook_deliveries (id) on delete cascade,
    attempt int not null,
    attempted_at timestamptz not null,
    status_code int,
    error text,
    duration_ms int not null,
    primary key (delivery_id, attempt)
);

-- Replays read the events of a period by time: only the types a webhook can
-- carry are indexed (usage records, by far the most numerous, are not).
create index events_webhook_types on events (occurred_at)
    where type in ('key.created', 'key.updated', 'key.regenerated', 'key.deactivated', 'key.activated',
                   'key.deleted', 'key.expired', 'key.rotation_due', 'key.leaked', 'alert.raised');
