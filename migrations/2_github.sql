-- Webhook deliveries, one row per X-GitHub-Delivery: the primary key makes a redelivery (or
-- two copies arriving at once) a no-op. `payload` is the parsed domain event for the job.
CREATE TABLE deliveries (
    id TEXT PRIMARY KEY,
    event TEXT NOT NULL,
    repo TEXT,
    installation_id INTEGER,
    payload TEXT,
    outcome TEXT NOT NULL,
    received_at TEXT NOT NULL
);

-- Where the App is installed, and which repositories it may act on.
CREATE TABLE installations (
    id INTEGER PRIMARY KEY,
    account TEXT NOT NULL,
    active INTEGER NOT NULL DEFAULT 1,
    updated_at TEXT NOT NULL
);

CREATE TABLE installation_repos (
    installation_id INTEGER NOT NULL REFERENCES installations (id) ON DELETE CASCADE,
    repo TEXT NOT NULL,
    PRIMARY KEY (installation_id, repo)
);
