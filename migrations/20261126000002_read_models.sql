-- Read models, projected from the event log. Each row carries the version of
-- the last event applied to it: applying an event again changes nothing.

create table orgs (
    id text primary key,
    name text not null,
    plan text not null,
    rate_limit_per_minute int not null,
    alert_emails text[] not null,
    rotation_days int not null,
    alert_settings jsonb not null,
    created_at timestamptz not null,
    version bigint not null
);

create table keys (
    id text primary key,
    org_id text not null,
    name text not null,
    key_type text not null,
    environment text not null,
    scopes text[] not null,
    -- Recorded status; verification also checks expires_at against the clock.
    status text not null,
    -- Keyed blake3 hash of the current secret (the secret itself is never
    -- stored); null once the key is deleted.
    key_hash bytea unique,
    prefix text not null,
    last_four text not null,
    -- A regenerated-away secret that still works until previous_valid_until.
    previous_key_hash bytea unique,
    previous_valid_until timestamptz,
    created_at timestamptz not null,
    expires_at timestamptz,
    rotation_due_at timestamptz,
    last_used_at timestamptz,
    -- Deleted keys stay as tombstones so a replayed event cannot revive them.
    deleted_at timestamptz,
    version bigint not null
);

-- The key list: one organization's live keys, newest first (ids sort by time).
create index keys_list on keys (org_id, id desc) where deleted_at is null;
