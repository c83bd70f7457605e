-- The live tail of a task's run: the last bytes its agent and its gates printed, written by
-- the worker every second or so while they run, so a page in any process can show them.
-- One row per task: a new run replaces the last one's.
CREATE TABLE task_output (
    task_pk INTEGER PRIMARY KEY REFERENCES tasks (pk) ON DELETE CASCADE,
    run_seq INTEGER NOT NULL,
    text TEXT NOT NULL,
    -- Milliseconds since the epoch: what a page's stream compares to see a change.
    updated_ms INTEGER NOT NULL
);

CREATE INDEX task_output_updated ON task_output (updated_ms);
