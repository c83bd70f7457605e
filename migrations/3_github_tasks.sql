-- GitHub tasks: where they came from and what autodev posted about them.
ALTER TABLE tasks ADD COLUMN installation_id INTEGER;
ALTER TABLE tasks ADD COLUMN issue_number INTEGER;
ALTER TABLE tasks ADD COLUMN requested_by TEXT;
ALTER TABLE tasks ADD COLUMN status_comment_id INTEGER;
ALTER TABLE tasks ADD COLUMN check_run_id INTEGER;
