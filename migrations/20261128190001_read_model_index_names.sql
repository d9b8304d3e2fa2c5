-- A replay before this release copied the read models `like … including
-- all`, which names each copied index anew: after it, `keys_list` was
-- `keys_org_id_id_idx` and `usage_rollups_recent` was
-- `usage_rollups_granularity_bucket_idx`. Replays now keep the live names;
-- this gives a database replayed before them its names back, so that later
-- migrations find the indexes by the names they were created with. (Where
-- someone already made an index of the original name, `keys_list` or
-- `usage_rollups_recent`, again, both are left as they are. A replay by an
-- older binary would rename them once more.)
do $$
begin
  if to_regclass('keys_list') is null then
    alter index if exists keys_org_id_id_idx rename to keys_list;
  end if;
  if to_regclass('usage_rollups_recent') is null then
    alter index if exists usage_rollups_granularity_bucket_idx rename to usage_rollups_recent;
  end if;
end
$$;
