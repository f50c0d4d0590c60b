-- upstreamd.lua: dynamic upstream pools for nginx, kept by the upstreamd daemon.
--
-- The daemon PUTs the healthy backends of every service to
-- /upstreamd/pools on the status port; they go into a shared dict that
-- every worker reads, so pool changes need no reload (a reload makes old
-- workers close idle client keep-alive connections, which clients see as
-- errors). The body is kept in /etc/nginx/upstreamd/pools so that a
-- restarted nginx starts with the last pools. Writes need the token in
-- /etc/nginx/upstreamd/token (written by the daemon) in X-Upstreamd-Token.
--
-- Body format: a version line, then one line per service:
--   <version>\n<service> <addr> <addr> ...\n
-- where addr is ipv4:port or [ipv6]:port.

local balancer = require "ngx.balancer"
local bit = require "bit"

local M = {}

local DICT = "upstreamd"
local STATE_DIR = "/etc/nginx/upstreamd"
local POOLS_FILE = STATE_DIR .. "/pools"
local TOKEN_FILE = STATE_DIR .. "/token"
local MAX_BODY = 16 * 1024 * 1024 -- as client_max_body_size in the trailer
-- A peer that failed to connect (refused, timed out) is skipped by every
-- worker for this long, or until a push brings it back as a new member:
-- nginx's max_fails=1 fail_timeout, shared across workers. The daemon's
-- push of the pool without it usually comes first.
local FAIL_TIMEOUT = 5
local DOWN = "down:" -- dict key prefix of a skipped peer: down:<ip:port>
-- A connect that timed out (rather than being refused) says the address
-- itself is gone: a dead host, whose every port hangs. Then every peer at
-- that IP is skipped, so a lost host costs one connect timeout, not one per
-- backend on it. (With container addresses each peer has its own IP.) A
-- read timeout (nginx reports it as 504 too) says only that one request
-- was slow on a host that answered: it skips that peer, never its host,
-- so one slow request cannot take every backend of a live host out.
local DOWN_HOST = "downhost:" -- dict key prefix of a skipped IP

-- Per worker: the parsed pools and the dict generation they come from,
-- and the round-robin position per service.
local cache = { generation = nil, pools = {} }
local rr = {}

local function parse(text)
  local pools = {}
  for line in string.gmatch(text, "[^\n]+") do
    local name, rest = string.match(line, "^(%S+)(.*)$")
    if name then
      local peers = {}
      for addr in string.gmatch(rest, "%S+") do
        -- set_current_peer wants IPv6 in brackets; names are not resolved,
        -- so the daemon sends IP addresses only.
        local host, port = string.match(addr, "^(%[[%x:]+%]):(%d+)$")
        if not host then
          host, port = string.match(addr, "^([%d%.]+):(%d+)$")
        end
        if host then
          peers[#peers + 1] = { host, tonumber(port) }
        end
      end
      pools[name] = peers
    end
  end
  return pools
end

local function current()
  local dict = ngx.shared[DICT]
  local gen = dict:get("generation")
  if gen ~= cache.generation then
    cache.pools = parse(dict:get("pools") or "")
    cache.generation = gen
  end
  return cache.pools
end

local function read_file(path)
  local f = io.open(path, "r")
  if not f then
    return nil
  end
  local data = f:read("*a")
  f:close()
  return data
end

local function publish(dict, version, pools)
  dict:set("pools", pools)
  dict:set("version", version)
  dict:incr("generation", 1, 0)
end

-- init_worker seeds an empty dict (nginx was restarted) from the file.
function M.init_worker()
  local dict = ngx.shared[DICT]
  if dict:get("generation") ~= nil then
    return
  end
  local text = read_file(POOLS_FILE)
  if not text then
    return
  end
  local version, pools = string.match(text, "^(%d+)\n(.*)$")
  if version and dict:add("seeded", true) then
    publish(dict, tonumber(version), pools)
  end
end

-- eject marks the peer a request just failed to reach, so that no worker
-- picks it for FAIL_TIMEOUT: one request waits out a dead peer's connect
-- timeout, not one per worker and round.
local function eject(dict, key, host)
  if dict:add(DOWN .. key, true, FAIL_TIMEOUT) then
    dict:incr("ejections", 1, 0)
    ngx.log(ngx.WARN, "upstreamd: ", key, " failed; skipped for ", FAIL_TIMEOUT, " s")
  end
  if host and dict:add(DOWN_HOST .. host, true, FAIL_TIMEOUT) then
    dict:incr("host_ejections", 1, 0)
    ngx.log(ngx.WARN, "upstreamd: connect to ", key, " timed out; every peer at ", host, " skipped for ", FAIL_TIMEOUT, " s")
  end
end

-- connected reports whether the attempt that just failed had connected to
-- its peer: $upstream_connect_time lists one time per attempt, "-" for one
-- that never connected (a retry adds an empty entry after " : " for the
-- attempt being chosen). Unknown counts as connected: never eject a host
-- on a guess.
local function connected()
  local times = ngx.var.upstream_connect_time
  if not times then
    return true
  end
  local last = string.match(string.gsub(times, "[%s:,]+$", ""), "([^%s:,]+)$")
  return last ~= "-"
end

-- down reports whether the peer (host, port) is skipped.
local function down(dict, host, key)
  return dict:get(DOWN .. key) or dict:get(DOWN_HOST .. host)
end

-- balance picks the next peer of service, round robin, never one this
-- request already tried (proxy_next_upstream retries call it again), and
-- a peer that failed lately only when every other one has been tried.
function M.balance(service)
  local peers = current()[service]
  local n = peers and #peers or 0
  if n == 0 then
    return ngx.exit(ngx.ERROR)
  end
  local dict = ngx.shared[DICT]
  local ctx = ngx.ctx
  local tried = ctx.upstreamd_tried
  if not tried then
    tried = {}
    ctx.upstreamd_tried = tried
    if n > 1 then
      balancer.set_more_tries(n - 1)
    end
  else
    -- A retry after a connect error or timeout ("next" is an answer
    -- such as a 502, from a peer that is up); a connect timeout (a 504
    -- before any connection) takes the peer's whole IP out, a read
    -- timeout only the peer.
    local state, code = balancer.get_last_failure()
    if ctx.upstreamd_last and state == "failed" then
      local host = nil
      if code == 504 and not connected() then
        host = ctx.upstreamd_last_host
      end
      eject(dict, ctx.upstreamd_last, host)
    end
  end
  local i = rr[service] or 0
  local pick, pick_key
  for _ = 1, n do
    i = i % n + 1
    local p = peers[i]
    local key = p[1] .. ":" .. p[2]
    if not tried[key] then
      if not down(dict, p[1], key) then
        pick, pick_key = i, key
        break
      end
      if not pick then
        pick, pick_key = i, key -- the first skipped one, if all are
      end
    end
  end
  if not pick then
    return ngx.exit(ngx.ERROR)
  end
  tried[pick_key] = true
  ctx.upstreamd_last = pick_key
  ctx.upstreamd_last_host = peers[pick][1]
  rr[service] = pick
  local p = peers[pick]
  local ok, err = balancer.set_current_peer(p[1], p[2])
  if not ok then
    ngx.log(ngx.ERR, "upstreamd: set peer ", pick_key, ": ", err)
    return ngx.exit(ngx.ERROR)
  end
end

-- require_backends answers 503 while service has no healthy backend.
function M.require_backends(service)
  local peers = current()[service]
  if peers and #peers > 0 then
    return
  end
  ngx.status = ngx.HTTP_SERVICE_UNAVAILABLE
  ngx.header["Content-Type"] = "text/plain"
  ngx.say("no healthy backend for service ", service)
  return ngx.exit(ngx.HTTP_SERVICE_UNAVAILABLE)
end

-- same compares two strings in time that depends on their lengths only, so
-- that the answer's timing says nothing about how much of a token was right.
local function same(a, b)
  if type(a) ~= "string" or type(b) ~= "string" or #a ~= #b then
    return false
  end
  local diff = 0
  for i = 1, #a do
    diff = bit.bor(diff, bit.bxor(string.byte(a, i), string.byte(b, i)))
  end
  return diff == 0
end

-- api serves GET (the pools in use) and PUT (new pools) on /upstreamd/pools.
function M.api()
  local dict = ngx.shared[DICT]
  local method = ngx.req.get_method()
  if method == "GET" then
    ngx.header["Content-Type"] = "text/plain"
    ngx.print("version ", tostring(dict:get("version") or "none"), "\n", dict:get("pools") or "")
    return
  end
  if method ~= "PUT" then
    return ngx.exit(ngx.HTTP_NOT_ALLOWED)
  end
  local token = read_file(TOKEN_FILE)
  if not token or #token < 16 or not same(ngx.var.http_x_upstreamd_token, token) then
    return ngx.exit(ngx.HTTP_FORBIDDEN)
  end
  ngx.req.read_body()
  local body = ngx.req.get_body_data()
  if not body or #body > MAX_BODY then
    return ngx.exit(ngx.HTTP_BAD_REQUEST)
  end
  local version, pools = string.match(body, "^(%d+)\n(.*)$")
  if not version then
    return ngx.exit(ngx.HTTP_BAD_REQUEST)
  end
  -- Keep it for a restarted nginx: write aside, then rename.
  local tmp = POOLS_FILE .. ".tmp"
  local f, err = io.open(tmp, "w")
  if f then
    f:write(body)
    f:close()
    os.rename(tmp, POOLS_FILE)
  else
    ngx.log(ngx.WARN, "upstreamd: cannot keep pools in ", tmp, ": ", err)
  end
  -- An address new to a pool is a new backend (the engine reuses the
  -- addresses of dead containers): whatever failed there before is not it.
  local before = parse(dict:get("pools") or "")
  for name, peers in pairs(parse(pools)) do
    local old = {}
    for _, p in ipairs(before[name] or {}) do
      old[p[1] .. ":" .. p[2]] = true
    end
    for _, p in ipairs(peers) do
      local key = p[1] .. ":" .. p[2]
      if not old[key] then
        dict:delete(DOWN .. key)
        dict:delete(DOWN_HOST .. p[1]) -- a new backend there: the host is up
      end
    end
  end
  publish(dict, tonumber(version), pools)
  ngx.header["Content-Type"] = "text/plain"
  ngx.say("ok ", version)
end

-- ejections answers how many peers were skipped after a failure since
-- nginx started, and which are skipped now:
--   ejections <n>\n, host-ejections <n>\n (IPs skipped whole), then one
--   "down <ip:port>" line per peer and one "down-host <ip>" line per IP
--   skipped now.
function M.ejections()
  local dict = ngx.shared[DICT]
  ngx.header["Content-Type"] = "text/plain"
  local out = { "ejections " .. tostring(dict:get("ejections") or 0),
    "host-ejections " .. tostring(dict:get("host_ejections") or 0) }
  for _, k in ipairs(dict:get_keys(0)) do
    if string.sub(k, 1, #DOWN) == DOWN then
      out[#out + 1] = "down " .. string.sub(k, #DOWN + 1)
    elseif string.sub(k, 1, #DOWN_HOST) == DOWN_HOST then
      out[#out + 1] = "down-host " .. string.sub(k, #DOWN_HOST + 1)
    end
  end
  ngx.print(table.concat(out, "\n"), "\n")
end

return M
