-- Who receives each organization's alerts (alert recipients): its alert
-- addresses in list order, each with the time it confirmed that it wants
-- them. A read model of the org events, like `orgs` (whose version guard
-- decides whether an event is applied); `replay` rebuilds it.
create table alert_recipients (
    org_id text not null,
    email text not null,
    -- The address's place in the organization's list, from 1.
    position int not null,
    -- When the address followed its confirmation link (an address the
    -- operator gave at creation: the creation time); null until then.
    -- Alerts go to confirmed addresses only.
    confirmed_at timestamptz,
    primary key (org_id, email)
);

-- From here on an address read back from the log is parsed again, as
-- `EmailAddress::parse` does (events/src/domain/email.rs): a plain address
-- gets its canonical spelling (domain in lower case); one that is not (an
-- older version took `"Evil"<x@y.z>` or `a,c@d.com`) is kept as typed and
-- is never confirmed or mailed. This function is that rule in SQL, for the
-- backfill below only (a temporary function: it ends with the session).
-- Null: not a plain address.
create function pg_temp.canonical_email(address text) returns text language sql immutable as $fn$
    select case
        when length(address) <= 254
         and length(split_part(address, '@', 1)) <= 64
         and address ~ '^[A-Za-z0-9!#$%&''*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&''*+/=?^_`{|}~-]+)*@[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$'
         and address !~ '\.[0-9]+$'
        then split_part(address, '@', 1) || '@' || lower(split_part(address, '@', 2))
    end
$fn$;

-- The lists as a replay now reads them: each address in its canonical
-- spelling, once (two spellings kept apart before may now be one).
update orgs o set alert_emails = coalesce((
    select array_agg(d.email order by d.first)
    from (select coalesce(pg_temp.canonical_email(a.email), a.email) as email, min(a.n) as first
          from unnest(o.alert_emails) with ordinality as a(email, n)
          group by 1) d), '{}');

-- The addresses organizations already have, as replaying their events
-- gives them: a plain address given at creation and never removed since is
-- confirmed; any other one has not confirmed anything yet (`keyledger work`
-- asks those set over the API to confirm; see workers/src/recipients.rs).
insert into alert_recipients (org_id, email, position, confirmed_at)
select o.id, a.email, a.position,
       case when pg_temp.canonical_email(a.email) is not null
                 and exists (
                     select 1 from jsonb_array_elements_text(created.data -> 'alert_emails') as c(email)
                     where coalesce(pg_temp.canonical_email(c.email), c.email) = a.email)
                 and not exists (
                     select 1 from events s
                     where s.stream_id = 'org-' || o.id and s.type = 'org.settings_changed'
                       and s.version <= o.version and s.data ? 'alert_emails'
                       and not exists (
                           select 1 from jsonb_array_elements_text(s.data -> 'alert_emails') as l(email)
                           where coalesce(pg_temp.canonical_email(l.email), l.email) = a.email))
            then o.created_at end
from orgs o
cross join lateral unnest(o.alert_emails) with ordinality as a(email, position)
left join events created on created.stream_id = 'org-' || o.id and created.type = 'org.created';

drop function pg_temp.canonical_email(text);

-- Recipients of an alert who were removed from the organization's alert
-- addresses (or are no longer confirmed, or are not plain addresses)
-- before their email went out: they are never mailed it.
alter table alerts add column withdrawn text[] not null default '{}';
