-- wrk script: POST /v1/keys until each thread has created its share, each
-- thread writing the new keys' secrets (one a line) to a file of its own in
-- KEYS_DIR; the admin key comes from the environment, not the command line.
--
--   KEYLEDGER_ADMIN_KEY=sk_live_... wrk -tTHREADS ... -s scripts/create-keys.lua URL/v1/keys \
--     -- KEYS_DIR PER_THREAD BODY
local created, out, limit = 0, nil, nil

function setup(thread)
  thread:set("id", tostring(thread))
end

function init(args)
  out = io.open(args[1] .. "/" .. id:gsub("%W", ""), "w")
  limit = tonumber(args[2])
  wrk.method = "POST"
  wrk.body = args[3]
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("KEYLEDGER_ADMIN_KEY")
end

function response(status, headers, body)
  if status == 201 then
    created = created + 1
    out:write(body:match('"key"%s*:%s*"([^"]+)"'), "\n")
    if created >= limit then out:flush(); wrk.thread:stop() end
  end
end
