-- Why part of what a task's issue asked for was not used (shown in its status comment).
ALTER TABLE tasks ADD COLUMN notice TEXT;

-- Replies to people who may not command autodev: at most one per person and issue an hour,
-- so an outsider cannot make autodev post a comment for every comment they write.
CREATE TABLE outsider_replies (
    repo TEXT NOT NULL,
    issue INTEGER NOT NULL,
    login TEXT NOT NULL,
    last_at INTEGER NOT NULL,
    PRIMARY KEY (repo, issue, login)
);
