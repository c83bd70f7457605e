-- Every object autodev creates on GitHub (a check run per pushed commit, a pull request per
-- pushed head, a task's status comment) is claimed here first: one row per task, kind and
-- head commit ('' when there is one per task). Whoever holds the claim creates the object and
-- records its id; anyone else updates the recorded object, or waits. A claim whose holder died
-- before recording (`until_ms` passed) is taken over by the next, which looks on GitHub first.
CREATE TABLE github_claims (
    task_pk INTEGER NOT NULL REFERENCES tasks(pk) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    head TEXT NOT NULL,
    holder TEXT NOT NULL,
    until_ms INTEGER NOT NULL,
    object_id INTEGER,
    PRIMARY KEY (task_pk, kind, head)
);
