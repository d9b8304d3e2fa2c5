-- The customer portal's sign-in. A link is minted for an organization (and
-- the platform's user it is for) and works once, for a few minutes; following
-- it starts a session. Only blake3 hashes of the tokens are stored, so a copy
-- of these tables signs nobody in.
create table portal_links (
    token_hash bytea primary key,
    org_id text not null,
    -- The platform's user, recorded as the actor 'portal:<user>'; null: 'portal'.
    user_email text,
    created_at timestamptz not null,
    expires_at timestamptz not null,
    -- Set when the link is followed: a second use finds it set and is refused.
    used_at timestamptz
);

create table portal_sessions (
    token_hash bytea primary key,
    org_id text not null,
    user_email text,
    created_at timestamptz not null,
    -- Sessions end 12 hours after sign-in, or when the row is deleted (Sign out).
    expires_at timestamptz not null
);

-- Expired links and sessions are swept by time.
create index portal_links_expiry on portal_links (expires_at);
create index portal_sessions_expiry on portal_sessions (expires_at);

-- The portal's alerts page: one organization's newest alerts first.
create index alerts_by_org on alerts (org_id, id desc);
