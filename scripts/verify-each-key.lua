-- wrk script: POST /v1/verify once for each key of a file (one key a line),
-- the keys shared out between wrk's threads; a thread stops sending after
-- its share (wrk itself waits out its duration: the caller stops it).
--
--   wrk -tTHREADS ... -s scripts/verify-each-key.lua URL -- KEYS_FILE THREADS
local counter, keys, next_key = 0, {}, 1

function setup(thread)
  thread:set("index", counter)
  counter = counter + 1
end

function init(args)
  local path, threads, n = args[1], tonumber(args[2]), 0
  for line in io.lines(path) do
    if n % threads == index then keys[#keys + 1] = line end
    n = n + 1
  end
end

function request()
  if next_key > #keys then wrk.thread:stop() end
  local key = keys[math.min(next_key, #keys)]
  next_key = next_key + 1
  return wrk.format("POST", "/v1/verify", {["Content-Type"] = "application/json"}, '{"key": "' .. key .. '"}')
end
