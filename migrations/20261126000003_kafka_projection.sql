-- Kafka mode: the newest version of each stream that the consuming
-- projector has applied, updated in the same transaction as the read
-- models. A redelivered message (a worker crashed after its commit but
-- before storing its offset, or the relay published it twice) finds its
-- version already here and is skipped.
create table kafka_projection (
    stream_id text primary key,
    version bigint not null,
    event_id uuid not null,
    applied_at timestamptz not null default now()
);
