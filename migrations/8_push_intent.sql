-- The commit autodev is about to push to the task's branch, written before the push: after a
-- crash between the push and its record, the next push finds it on GitHub and takes it as
-- pushed (the lease it pushes with) instead of being refused for ever.
ALTER TABLE tasks ADD COLUMN push_intent TEXT;
