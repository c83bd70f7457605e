-- GitHub side effects the outbox gave up on after its retries (GitHub down or limiting for
-- longer than they last). The reconciler queues them again, a bounded number of times.
CREATE TABLE stalled_effects (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    effect TEXT NOT NULL,
    rounds INTEGER NOT NULL,
    reason TEXT NOT NULL,
    at TEXT NOT NULL
);
