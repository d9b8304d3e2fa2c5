-- Per-key IP allowlists and leaked-key reports (read models of the key and
-- org events; `replay` rebuilds them).

-- The addresses and CIDR ranges a key's requests may come from, in the
-- canonical form the key object shows ('203.0.113.0/24', '198.51.100.7');
-- empty: no allowlist. Verification reads it with the key (into the cache),
-- so enforcing it costs no query.
alter table keys add column allowed_ips text[] not null default '{}';

-- When the key's current secret was reported leaked (`key.leaked`); null
-- again once it is regenerated. The portal marks such keys.
alter table keys add column leaked_at timestamptz;

-- What a reported leak does besides the record and the email: 'deactivate'
-- (the default) or 'notify' (org.settings_changed's leak_action).
alter table orgs add column leak_action text not null default 'deactivate';
