-- Usage per key, projected from key.used events: one row per key and
-- minute, hour and day (UTC). The increments are applied only when the
-- keys row's version guard accepts the event, so replays add nothing twice.
create table usage_rollups (
    key_id text not null,
    org_id text not null,
    -- 'minute', 'hour' or 'day'
    granularity text not null,
    bucket timestamptz not null,
    requests bigint not null,
    successful bigint not null,
    failed bigint not null,
    rate_limited bigint not null,
    primary key (key_id, granularity, bucket)
);
