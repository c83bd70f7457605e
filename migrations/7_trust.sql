-- Why part of what a task's issue asked for was not used (shown in its status comment).
ALTER TABLE tasks ADD COLUMN notice TEXT;
-- The base commit the run started from, resolved by autodev before the agent ran: what every
-- later push of the run is checked against (a ref name in the shared git directory is the
-- agent's to move).
ALTER TABLE tasks ADD COLUMN base_sha TEXT;

-- Replies to people who may not command autodev: at most one per person and issue an hour,
-- so an outsider cannot make autodev post a comment for every comment they write.
CREATE TABLE outsider_replies (
    repo TEXT NOT NULL,
    issue INTEGER NOT NULL,
    login TEXT NOT NULL,
    last_at INTEGER NOT NULL,
    PRIMARY KEY (repo, issue, login)
);
