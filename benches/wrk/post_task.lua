-- POST /tasks with a YAML spec whose id is new on every request.
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
function init(args)
  counter = 0
  run = os.getenv("BENCH_RUN") or "r"
end
function request()
  counter = counter + 1
  local id = string.format("b-%s-%d-%d", run, tid, counter)
  local body = "id: " .. id .. "\ntitle: A benchmark task\ndescription: Write the feature file.\nrole: backend\n"
  return wrk.format("POST", "/tasks", { ["Content-Type"] = "application/yaml" }, body)
end
