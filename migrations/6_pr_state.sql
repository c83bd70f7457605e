-- Whether the task's pull request is still open (`closed` once merged or closed).
ALTER TABLE tasks ADD COLUMN pr_state TEXT;
