-- Where a GitHub task's repository is fetched from, and the last commit pushed for it.
ALTER TABLE tasks ADD COLUMN clone_url TEXT;
ALTER TABLE tasks ADD COLUMN pushed_sha TEXT;
