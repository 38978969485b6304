-- wrk script: POST /v1/jobs with a unique job name per request.
-- The key comes from the environment (never on the command line).
local key = os.getenv("ZHISUAN_LOAD_KEY")
local threads = 0
local counter = 0

-- Runs in the main state: give each thread its own id (a global `tid` there).
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

request = function()
  counter = counter + 1
  local body = string.format(
    '{"kind":"training","name":"load-%d-%d","replicas":1,"gpu_milli":100,"image":"registry.local/bench:1","max_runtime_s":60}',
    tid or 0, counter)
  return wrk.format("POST", "/v1/jobs", {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. key,
  }, body)
end
