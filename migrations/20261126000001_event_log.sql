-- The event log: the source of truth of keyledger, the audit trail, and the
-- outbox from which events are published. Append-only.
create table events (
    -- Global position. It comes from a sequence before commit, so on its own
    -- a higher position can become visible before a lower one: readers go in
    -- (tx_id, position) order instead (see below).
    position bigint generated always as identity primary key,
    -- The appending transaction's id. Readers only take rows of transactions
    -- older than the oldest still running (pg_snapshot_xmin), so a reader
    -- never passes an append that has not committed yet.
    tx_id bigint not null default (pg_current_xact_id()::text::bigint),
    event_id uuid not null unique,
    stream_id text not null,
    version bigint not null check (version > 0),
    type text not null,
    schema_version int not null,
    occurred_at timestamptz not null,
    -- Who: a key id, 'system:<job>' or 'cli'.
    actor text not null,
    request_id text,
    data jsonb not null,
    -- Optimistic concurrency: two writers of the same version conflict.
    constraint events_stream_version unique (stream_id, version)
);

-- The readers' order.
create index events_read_order on events (tx_id, position);

-- History is never rewritten.
create function events_append_only() returns trigger language plpgsql as $$
begin
    raise exception 'the event log is append-only';
end $$;
create trigger events_append_only before update or delete or truncate on events
    for each statement execute function events_append_only();

-- How far each projector has read, updated in the same transaction as the
-- read models it writes, so a re-run changes nothing.
create table projector_checkpoints (
    name text primary key,
    tx_id bigint not null,
    position bigint not null,
    updated_at timestamptz not null default now()
);
