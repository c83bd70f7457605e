//! `autodev config check`: the configuration in effect, each value with where it came from (a
//! default, the configuration file, a variable of the environment, a flag), and no secret
//! shown. Part of the program layer.

use std::fmt::Write as _;

use serde_yaml::Value;

use crate::config::Settings;

/// Where a value came from.
fn source_of(settings: &Settings, var: &str, flag: bool) -> String {
    if settings.env.get(var).is_some() {
        format!("env {var}")
    } else if settings.env.get(&format!("{var}_FILE")).is_some() {
        format!("env {var}_FILE")
    } else if flag {
        "flag".into()
    } else {
        "default".into()
    }
}

/// The report: the process's settings, then every key of the configuration file's schema.
pub fn render(settings: &Settings) -> anyhow::Result<String> {
    let mut out = String::new();
    let file = match &settings.config_path {
        Some(p) => p.display().to_string(),
        None => "none (defaults only)".into(),
    };
    let set = |present: bool| {
        if present {
            "<set, not shown>"
        } else {
            "not set"
        }
    };
    let rows: Vec<(&str, String, String)> = vec![
        (
            "config_file",
            file.clone(),
            if settings.config_path.is_some()
                && settings.config_path == crate::config::default_config_path(&settings.env)
            {
                "default location".into()
            } else {
                source_of(settings, "AUTODEV_CONFIG", settings.config_path.is_some())
            },
        ),
        (
            "data_dir",
            settings.data_dir.display().to_string(),
            source_of(settings, "AUTODEV_DATA_DIR", false),
        ),
        (
            "database_url",
            settings.database_url.clone(),
            source_of(settings, "AUTODEV_DATABASE_URL", false),
        ),
        (
            "bind",
            settings.bind.clone(),
            source_of(settings, "AUTODEV_BIND", false),
        ),
        (
            "repo_path",
            settings.repo_path.display().to_string(),
            source_of(settings, "REPO_PATH", false),
        ),
        (
            "api_token",
            set(settings.api_token.is_some()).into(),
            source_of(settings, "AUTODEV_API_TOKEN", false),
        ),
        (
            "public_url",
            settings
                .public_url
                .clone()
                .unwrap_or_else(|| "not set".into()),
            source_of(settings, "AUTODEV_PUBLIC_URL", false),
        ),
        (
            "github_app",
            match &settings.github {
                Some(app) => format!(
                    "App {} (private key and webhook secret set, not shown)",
                    app.app_id
                ),
                None => "not set: local mode".into(),
            },
            match (settings.env.get("GITHUB_APP_ID"), &settings.github) {
                (None, Some(_)) => format!(
                    "made by the setup page ({})",
                    settings
                        .data_dir
                        .join(crate::config::StoredApp::FILE)
                        .display()
                ),
                _ => source_of(settings, "GITHUB_APP_ID", false),
            },
        ),
        (
            "github_api_url",
            settings.github_api_url.clone(),
            source_of(settings, "GITHUB_API_URL", false),
        ),
        (
            "github_token",
            set(settings.github_token.is_some()).into(),
            source_of(settings, "GITHUB_TOKEN", false),
        ),
    ];
    writeln!(
        out,
        "# autodev's configuration in effect; after each value, where it comes from"
    )?;
    writeln!(
        out,
        "# (default, the file, env NAME, or a flag). Secrets are never shown."
    )?;
    for (key, value, source) in rows {
        writeln!(out, "{key}: {}  # {source}", inline(&Value::String(value)))?;
    }
    for var in [
        "ANTHROPIC_API_KEY",
        "OPENAI_API_KEY",
        "GEMINI_API_KEY",
        "CURSOR_API_KEY",
    ] {
        let present = settings.env.secret(var).ok().flatten().is_some();
        writeln!(
            out,
            "{}: {}  # env {var}",
            var.to_lowercase(),
            inline(&Value::String(set(present).into()))
        )?;
    }
    let effective = serde_yaml::to_value(&settings.file)?;
    let written: Option<Value> = match &settings.config_path {
        Some(p) => {
            let text = std::fs::read_to_string(p)?;
            serde_yaml::from_str(&text).ok()
        }
        None => None,
    };
    let from_file = format!("file {file}");
    show(&effective, written.as_ref(), 0, &from_file, &mut out)?;
    Ok(out)
}

/// Writes `v` (a mapping) as YAML, one leaf per line with its source.
fn show(
    v: &Value,
    written: Option<&Value>,
    depth: usize,
    from_file: &str,
    out: &mut String,
) -> anyhow::Result<()> {
    let Value::Mapping(m) = v else {
        return Ok(());
    };
    for (k, child) in m {
        let key = k.as_str().unwrap_or_default();
        let written_child = written.and_then(|w| w.get(key));
        let pad = "  ".repeat(depth);
        match child {
            Value::Mapping(inner) if !inner.is_empty() => {
                writeln!(out, "{pad}{key}:")?;
                show(child, written_child, depth + 1, from_file, out)?;
            }
            _ => {
                let source = if written_child.is_some() {
                    from_file
                } else {
                    "default"
                };
                writeln!(out, "{pad}{key}: {}  # {source}", inline(child))?;
            }
        }
    }
    Ok(())
}

/// A value on one line (JSON is YAML's flow style).
fn inline(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}
