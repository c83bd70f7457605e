-- Tasks: the source of truth for every task's state. The queue job carries only `pk` and
-- `run_seq`; a job for an older run (before a retry) is stale and does nothing.
CREATE TABLE tasks (
    pk INTEGER PRIMARY KEY AUTOINCREMENT,
    repo TEXT NOT NULL,
    task_id TEXT NOT NULL,
    role TEXT NOT NULL,
    title TEXT NOT NULL,
    spec TEXT NOT NULL,
    branch TEXT NOT NULL,
    base_branch TEXT,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'passed', 'failed', 'error', 'cancelled')),
    run_seq INTEGER NOT NULL DEFAULT 1,
    job_id TEXT,
    rounds INTEGER NOT NULL DEFAULT 0,
    provider TEXT,
    last_error TEXT,
    head_sha TEXT,
    worktree TEXT,
    cost_usd REAL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_until INTEGER,
    agent_pgid INTEGER,
    agent_marker TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    UNIQUE (repo, task_id)
);

CREATE INDEX tasks_state ON tasks (state);
CREATE INDEX tasks_task_id ON tasks (task_id);

-- The timeline of a task, shown by `GET /tasks/{id}` and printed by `autodev run`.
CREATE TABLE task_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task_pk INTEGER NOT NULL REFERENCES tasks (pk) ON DELETE CASCADE,
    run_seq INTEGER NOT NULL,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL
);

CREATE INDEX task_events_task ON task_events (task_pk, id);

-- Acceptance gate results, per run and round.
CREATE TABLE gate_results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task_pk INTEGER NOT NULL REFERENCES tasks (pk) ON DELETE CASCADE,
    run_seq INTEGER NOT NULL,
    round INTEGER NOT NULL,
    gate TEXT NOT NULL,
    command TEXT,
    status TEXT NOT NULL CHECK (status IN ('passed', 'failed', 'skipped', 'timed_out')),
    exit_code INTEGER,
    duration_ms INTEGER NOT NULL,
    output TEXT NOT NULL,
    at TEXT NOT NULL
);

CREATE INDEX gate_results_task ON gate_results (task_pk, run_seq, round);
