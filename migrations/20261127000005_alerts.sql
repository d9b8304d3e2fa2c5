-- Alerts: what the scheduler decided to tell an organization, written before
-- any email is attempted. The mailer moves a row from 'pending' to 'sent' (or
-- to 'failed' after its last retry); an organization without alert addresses
-- gets 'unaddressed' rows, which are never mailed. This table is the mailer's
-- outbox, not a read model: `replay` never touches it, so a replay sends no email.
create table alerts (
    id uuid primary key,
    -- (type, key or organization, period): the same condition found again in the same
    -- period finds this row and adds nothing, whichever worker finds it.
    dedupe_key text not null unique,
    kind text not null,
    org_id text not null,
    -- The key the alert is about; null for an organization-wide digest.
    key_id text,
    recipients text[] not null,
    -- Recipients who have their email, and those the mail server refused
    -- for good (with its answer in refusals): a retry mails only the rest.
    delivered_to text[] not null default '{}',
    refused text[] not null default '{}',
    refusals text[] not null default '{}',
    -- The email as rendered when the alert was raised; it never holds a secret.
    subject text not null,
    body_text text not null,
    body_html text not null,
    -- 'pending', 'sent', 'failed' or 'unaddressed'
    status text not null,
    attempts int not null default 0,
    -- A pending alert is picked up once this time has passed: a claim pushes
    -- it ahead (a lease), a failed attempt pushes it by the backoff.
    next_attempt_at timestamptz not null,
    last_error text,
    created_at timestamptz not null,
    sent_at timestamptz
);

-- The mailer's queue: pending alerts in the order they become due.
create index alerts_pending on alerts (next_attempt_at) where status = 'pending';
-- "At most once an hour (a week) per key": the latest alert of a kind about
-- a key (or, for a digest, an organization).
create index alerts_recent on alerts (kind, (coalesce(key_id, org_id)), created_at);

-- The alert jobs read the last minutes and hours of every key's usage.
create index usage_rollups_recent on usage_rollups (granularity, bucket);
