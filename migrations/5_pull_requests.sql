-- The pull request opened for a task's branch.
ALTER TABLE tasks ADD COLUMN pr_number INTEGER;
