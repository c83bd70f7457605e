"""A replica of the earlier Python system's intake, for the intake benchmark's baseline:
FastAPI reads a task spec (YAML or JSON), checks its required keys, and RQ queues it on Redis.
Run by scripts/bench-intake with uvicorn (2 workers) and a Redis without persistence."""

import json

import redis
import rq
import yaml
from fastapi import FastAPI, HTTPException, Request

app = FastAPI()
queue = rq.Queue("autodev", connection=redis.Redis())
REQUIRED = ("id", "title", "description", "role")


def run_task(spec):
    """What a worker would run; never called in the benchmark."""


@app.post("/tasks", status_code=201)
async def create_task(request: Request):
    body = await request.body()
    content_type = request.headers.get("content-type", "")
    try:
        spec = yaml.safe_load(body) if "yaml" in content_type else json.loads(body)
    except Exception as e:  # noqa: BLE001 - any parse error is the client's
        raise HTTPException(status_code=422, detail=f"unreadable spec: {e}")
    missing = [k for k in REQUIRED if k not in (spec or {})]
    if missing:
        raise HTTPException(status_code=422, detail=f"missing keys: {missing}")
    if redis.Redis().sismember("autodev:task_ids", spec["id"]):
        raise HTTPException(status_code=409, detail="task exists")
    redis.Redis().sadd("autodev:task_ids", spec["id"])
    job = queue.enqueue(run_task, spec)
    return {"job_id": job.id, "task_id": spec["id"]}
