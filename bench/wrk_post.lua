-- wrk script for bench/serving.py: POST one fixed JSON body (the file named by the first
-- script argument, `wrk ... -s wrk_post.lua URL -- BODY_FILE`), count every response whose
-- status is not 2xx (wrk itself only counts status >= 400), and print one machine-readable
-- summary line starting with BENCH_JSON. Latencies are in microseconds.

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   local path = args[1]
   if path == nil then
      error("usage: wrk ... -s wrk_post.lua URL -- BODY_FILE")
   end
   local f = assert(io.open(path, "rb"))
   wrk.body = f:read("*a")
   f:close()
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
   responses = 0
   non2xx = 0
   first_bad_status = 0
   first_bad_body = ""
end

function response(status, headers, body)
   responses = responses + 1
   if status < 200 or status > 299 then
      non2xx = non2xx + 1
      if first_bad_status == 0 then
         first_bad_status = status
         first_bad_body = string.sub(body or "", 1, 300)
      end
   end
end

local function json_string(s)
   s = string.gsub(s, '[%c"\\]', function(c)
      return string.format("\\u%04x", string.byte(c))
   end)
   return '"' .. s .. '"'
end

function done(summary, latency, requests)
   local responses_total, non2xx_total, bad_status, bad_body = 0, 0, 0, ""
   for _, t in ipairs(threads) do
      responses_total = responses_total + t:get("responses")
      non2xx_total = non2xx_total + t:get("non2xx")
      if bad_status == 0 and t:get("first_bad_status") ~= 0 then
         bad_status = t:get("first_bad_status")
         bad_body = t:get("first_bad_body")
      end
   end
   local e = summary.errors
   local parts = {
      string.format('"duration_us":%d', summary.duration),
      string.format('"requests":%d', summary.requests),
      string.format('"bytes":%d', summary.bytes),
      string.format('"responses":%d', responses_total),
      string.format('"non_2xx":%d', non2xx_total),
      string.format('"first_bad_status":%d', bad_status),
      '"first_bad_body":' .. json_string(bad_body),
      string.format('"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}',
                    e.connect, e.read, e.write, e.status, e.timeout),
      string.format('"latency_us":{"min":%d,"max":%d,"mean":%.3f,"stdev":%.3f,"p50":%d,"p75":%d,"p90":%d,"p99":%d,"p99_9":%d}',
                    latency.min, latency.max, latency.mean, latency.stdev,
                    latency:percentile(50), latency:percentile(75), latency:percentile(90),
                    latency:percentile(99), latency:percentile(99.9)),
   }
   io.write("BENCH_JSON {" .. table.concat(parts, ",") .. "}\n")
end
