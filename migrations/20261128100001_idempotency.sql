-- Idempotency-Key records of POST /v1/keys and POST /v1/keys/{id}/regenerate.
-- Each is written in the same transaction as the command's events, so a
-- record exists exactly when its command committed: a retry with the same
-- key and body answers the recorded outcome instead of acting again.
create table idempotency_keys (
    -- Scope: a key means something only within one organization and one
    -- operation on one path (regenerating two keys with the same header
    -- value are two requests).
    org_id text not null,
    -- Method and path, e.g. 'POST /v1/keys' or 'POST /v1/keys/key_01…/regenerate'.
    operation text not null,
    idempotency_key text not null,
    -- blake3 of the request body as canonical JSON: the same key with
    -- another body is refused.
    request_hash bytea not null,
    -- The answer's status and body. Never the secret, which is not stored
    -- anywhere: a replay says it is unavailable.
    status smallint not null,
    response jsonb not null,
    -- Records answer retries for 24 hours after this.
    created_at timestamptz not null,
    primary key (org_id, operation, idempotency_key)
);

-- Finding an organization's expired records to delete them.
create index idempotency_keys_expiry on idempotency_keys (org_id, created_at);
