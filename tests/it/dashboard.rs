//! The dashboard and task pages over HTTP: what they list and filter, who may see them and
//! press their buttons (sign-in, CSRF), their live streams read from the database, the live
//! tail of an agent's output with secrets blotted out. (`browser.rs` drives them in Chromium.)

use crate::support::*;

/// A fake claude that waits until `$FAKE_AGENT_DIR/go` exists.
pub fn waiting_claude(world: &World) {
    world.agent(
        "claude",
        &format!(
            "cat > /dev/null\necho 'waiting for go'\nwhile [ ! -e \"$FAKE_AGENT_DIR/go\" ]; do sleep 0.1; done\necho go > went.txt\necho '{CLAUDE_OK}'"
        ),
    );
}

async fn html(server: &Server, path: &str, cookie: Option<&str>) -> (u16, String) {
    let mut rb = server.client.get(format!("{}{path}", server.url));
    if let Some(c) = cookie {
        rb = rb.header("Cookie", c);
    }
    let resp = rb.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

/// A stream of server-sent events being read.
pub struct Events {
    response: reqwest::Response,
    buffer: String,
    /// The data of the last `update` read.
    shown: String,
}

impl Events {
    pub async fn open(server: &Server, path: &str, cookie: Option<&str>) -> (u16, Self) {
        let mut rb = server.client.get(format!("{}{path}", server.url));
        if let Some(c) = cookie {
            rb = rb.header("Cookie", c);
        }
        let response = rb.send().await.unwrap();
        let status = response.status().as_u16();
        (
            status,
            Self {
                response,
                buffer: String::new(),
                shown: String::new(),
            },
        )
    }

    /// The next event with data, as (name, data with its lines joined as a browser joins
    /// them); `None` when the stream ended.
    pub async fn next(&mut self) -> Option<(String, String)> {
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut name = String::from("message");
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
                    }
                }
                if !data.is_empty() {
                    return Some((name, data.join("\n")));
                }
            }
            let chunk = tokio::time::timeout(PATIENCE, self.response.chunk())
                .await
                .expect("an event within the test's patience")
                .ok()??;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// What the page shows once it holds `needle`: the last update read if it does, else
    /// the first that does, reading on.
    pub async fn until(&mut self, needle: &str) -> String {
        if self.shown.contains(needle) {
            return self.shown.clone();
        }
        let mut seen = Vec::new();
        loop {
            match self.next().await {
                Some((name, data)) if name == "update" => {
                    self.shown = data;
                    if self.shown.contains(needle) {
                        return self.shown.clone();
                    }
                    seen.push(name);
                }
                Some(other) => seen.push(other.0),
                None => panic!("the stream ended before an update held `{needle}` ({seen:?})"),
            }
        }
    }
}

/// Signs in with `token`; the session cookie (`name=value`) to send.
pub async fn sign_in(server: &Server, token: &str) -> String {
    let answer = server
        .client
        .post(format!("{}/login", server.url))
        .header("Content-Type", "application/json")
        .body(serde_json::json!({ "token": token }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200, "signing in");
    let set = answer.headers()["set-cookie"].to_str().unwrap();
    assert_holds(set, "HttpOnly");
    assert_holds(set, "SameSite=Strict");
    set.split(';').next().unwrap().to_owned()
}

/// The CSRF token a task page gives its buttons.
pub fn csrf_of(page: &str) -> String {
    let literal = page
        .split("'X-CSRF-Token': ")
        .nth(1)
        .and_then(|rest| rest.split(" }").next())
        .unwrap_or_else(|| panic!("no CSRF token on the page:\n{page}"));
    serde_json::from_str(literal).unwrap()
}

fn titled(id: &str, role: &str, title: &str) -> String {
    format!("id: {id}\ntitle: {title}\ndescription: Write the feature file.\nrole: {role}\n")
}

/// The rows of the dashboard's task table: the ids it lists, in order.
fn listed(page: &str) -> Vec<String> {
    page.split("<tr data-task=\"")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_dashboard_lists_filters_and_searches_tasks() {
    let world = World::new();
    let server = world.serve_with(&["--workers", "0"]);
    for (id, role, title) in [
        ("ui-1", "backend", "Add a login form"),
        ("ops-1", "sre", "Rotate the <b>logs</b>"),
        ("ui-2", "backend", "Fix 100% of the login bugs"),
    ] {
        let (status, body) = server
            .post_spec("application/yaml", &titled(id, role, title))
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, page) = html(&server, "/", None).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(listed(&page), ["ui-2", "ops-1", "ui-1"], "newest first");
    // Counts by state, and the filters offer what there is.
    assert_holds(&page, r#"<b id="count-queued">3</b>"#);
    assert_holds(&page, r#"<option value="sre">sre (1)</option>"#);
    assert_holds(&page, r#"<option value="local">local (3)</option>"#);
    // A title is text, never markup.
    assert_holds(&page, "Rotate the &#60;b&#62;logs&#60;/b&#62;");
    assert_lacks(&page, "<b>logs</b>");

    let (_, page) = html(&server, "/?role=sre", None).await;
    assert_eq!(listed(&page), ["ops-1"]);
    assert_holds(&page, r#"<option value="sre" selected>"#);
    let (_, page) = html(&server, "/?q=login", None).await;
    assert_eq!(listed(&page), ["ui-2", "ui-1"]);
    // `%` and `_` are searched as themselves.
    let (_, page) = html(&server, "/?q=100%25", None).await;
    assert_eq!(listed(&page), ["ui-2"]);
    let (_, page) = html(&server, "/?q=_", None).await;
    assert_eq!(listed(&page), Vec::<String>::new());
    assert_holds(&page, "No task matches these filters");
    let (_, page) = html(&server, "/?state=passed", None).await;
    assert_eq!(listed(&page), Vec::<String>::new());
    let (_, page) = html(&server, "/?state=queued&role=backend&q=form", None).await;
    assert_eq!(listed(&page), ["ui-1"]);
    // The stream of a filtered page keeps its filters.
    assert_holds(
        &page,
        r#"data-stream="/events?state=queued&#38;role=backend&#38;q=form""#,
    );
    // A cancelled task leaves the queued count on the live stream, read from the database.
    let (_, mut events) = Events::open(&server, "/events?role=sre", None).await;
    let first = events.until("ops-1").await;
    assert_holds(&first, r#"<b id="count-queued">3</b>"#);
    let (status, body) = server.post("/tasks/ops-1/cancel").await;
    assert_eq!(status, 200, "{body}");
    let next = events.until(r#"<b id="count-cancelled">1</b>"#).await;
    assert_holds(&next, r#"<b id="count-queued">2</b>"#);
    assert_holds(&next, r#"<span class="state cancelled">cancelled</span>"#);
}

/// With a token, the dashboard needs a sign-in; a page's buttons need its CSRF token too, and
/// a page on another site can neither read nor act.
#[tokio::test]
async fn with_a_token_the_dashboard_needs_a_sign_in_and_buttons_a_csrf_token() {
    let mut world = World::new();
    world
        .extra_env
        .push(("AUTODEV_API_TOKEN".into(), "a-long-dashboard-token".into()));
    let server = world.serve_with(&["--workers", "0"]);
    let (status, body) = server.post_spec("application/yaml", &spec("t-1", "")).await;
    assert_eq!(status, 201, "{body}");

    // Not signed in: `/` leads to the sign-in page, the stream and the API refuse.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = no_redirects
        .get(format!("{}/", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 303);
    assert_eq!(resp.headers()["location"], "/login");
    let (status, _) = html(&server, "/login", None).await;
    assert_eq!(status, 200);
    let (status, _) = Events::open(&server, "/events", None).await;
    assert_eq!(status, 401);
    let (status, page) = html(&server, "/view/tasks/t-1", None).await;
    assert_eq!(status, 401, "{page}");

    let wrong = server
        .client
        .post(format!("{}/login", server.url))
        .header("Content-Type", "application/json")
        .body(r#"{"token": "not-the-token"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    let cookie = sign_in(&server, "a-long-dashboard-token").await;

    let (status, page) = html(&server, "/", Some(&cookie)).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(listed(&page), ["t-1"]);
    let (status, page) = html(&server, "/view/tasks/t-1", Some(&cookie)).await;
    assert_eq!(status, 200, "{page}");
    assert_holds(&page, r#"data-action="/tasks/t-1/cancel""#);
    let csrf = csrf_of(&page);
    assert_eq!(csrf.len(), 64, "{csrf}");

    let cancel = |cookie: Option<&str>, csrf: Option<&str>, origin: Option<&str>| {
        let mut rb = server
            .client
            .post(format!("{}/tasks/t-1/cancel", server.url))
            .header("Content-Type", "application/json")
            .body("{}");
        if let Some(c) = cookie {
            rb = rb.header("Cookie", c);
        }
        if let Some(t) = csrf {
            rb = rb.header("X-CSRF-Token", t);
        }
        if let Some(o) = origin {
            rb = rb.header("Origin", o);
        }
        rb.send()
    };
    // The cookie alone (what a cross-site form would carry) is not enough.
    let r = cancel(Some(&cookie), None, None).await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = cancel(Some(&cookie), Some(&"0".repeat(64)), None)
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // Nor are the cookie and the token sent from another site's page.
    let r = cancel(Some(&cookie), Some(&csrf), Some("https://evil.example"))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    // A CSRF token without its session is nothing.
    let r = cancel(None, Some(&csrf), None).await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let (_, task) = server.get("/tasks/t-1").await;
    assert_eq!(task["state"], "queued");
    // The page's own request is.
    let r = cancel(Some(&cookie), Some(&csrf), Some(&server.url))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
    let (_, task) = server.get("/tasks/t-1").await;
    assert_eq!(task["state"], "cancelled");

    // A forged session (a later expiry written in) is refused.
    let forged = {
        let mut parts: Vec<&str> = cookie.splitn(3, '.').collect();
        parts[1] = "9999999999";
        parts.join(".")
    };
    let resp = no_redirects
        .get(format!("{}/", server.url))
        .header("Cookie", &forged)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 303);
    // Signing out clears the cookie.
    let out = server
        .client
        .post(format!("{}/logout", server.url))
        .header("Content-Type", "application/json")
        .header("Cookie", &cookie)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_holds(out.headers()["set-cookie"].to_str().unwrap(), "Max-Age=0");
    // The sign-in page sends people back only to this server's own pages.
    let (_, page) = html(&server, "/login?next=//evil.example/x", None).await;
    assert_lacks(&page, "evil.example");
    let (_, page) = html(&server, "/login?next=/view/tasks/t-1", None).await;
    assert_holds(&page, r#"location.href = "/view/tasks/t-1""#);
}

/// A task's page follows the task as it runs in another process: its state, its timeline and
/// the agent's output as it comes, with autodev's secrets blotted out.
#[tokio::test]
async fn a_task_page_streams_the_run_and_the_agents_output_from_the_database() {
    let mut world = World::new();
    let secret = "sk-ant-api03-very-secret-value";
    world
        .extra_env
        .push(("ANTHROPIC_API_KEY".into(), secret.into()));
    // The agent (which sees its provider's key) is talked into printing it.
    world.agent(
        "claude",
        &format!(
            "cat > /dev/null\necho 'step one: reading'\nsleep 1\necho \"my key is $ANTHROPIC_API_KEY\"\nsleep 1\necho 'step two: writing'\necho done > done.txt\necho '{CLAUDE_OK}'"
        ),
    );
    let server = world.serve_with(&["--workers", "0"]);
    let (status, body) = server.post_spec("application/yaml", &spec("s-1", "")).await;
    assert_eq!(status, 201, "{body}");
    let (_, mut events) = Events::open(&server, "/view/tasks/s-1/events", None).await;
    let first = events.until("s-1").await;
    assert_holds(
        &first,
        r#"<span class="state queued" id="state">queued</span>"#,
    );

    // The task runs in a worker process; the page, served by another, follows it.
    let _worker = world.worker();
    let running = events.until("step one: reading").await;
    assert_holds(&running, r#"id="state">running</span>"#);
    let later = events.until("step two: writing").await;
    assert_holds(&later, "my key is [secret]");
    assert_lacks(&later, secret);
    events.until(r#"id="state">passed</span>"#).await;
    // Then the stream says the task ended, and ends.
    loop {
        match events.next().await {
            Some((name, _)) if name == "end" => break,
            Some(_) => continue,
            None => panic!("the stream ended without an end event"),
        }
    }
    assert!(events.next().await.is_none());
    // The output stays on the page, and nowhere does the secret show.
    let (_, page) = html(&server, "/view/tasks/s-1", None).await;
    assert_holds(&page, "step two: writing");
    assert_lacks(&page, secret);
    let pool = world.db().await;
    let stored: String = sqlx::query_scalar("SELECT text FROM task_output")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_lacks(&stored, secret);
}
