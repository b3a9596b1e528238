//! The HTTP status page: workers and operations as HTML (`/`) and JSON
//! (`/api/status`, `/api/workers`, `/api/operations`), and Prometheus
//! metrics (`/metrics`), on a port of their own.

use std::fmt::Write as _;
use std::future::Future;

use axum::Router;
use axum::extract::State as AxumState;
use axum::http::header;
use axum::response::{Html, IntoResponse, Json};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::scheduler::Scheduler;
use crate::state::{Execution, Phase, State};

/// Everything the status page shows.
#[derive(Clone, Debug, Serialize)]
pub struct StatusSnapshot {
    /// Registered workers, by id.
    pub workers: Vec<WorkerStatus>,
    /// Operations waiting for a worker, by arrival.
    pub queued: Vec<OperationStatus>,
    /// Operations a worker holds, by arrival.
    pub executing: Vec<OperationStatus>,
}

/// One registered worker.
#[derive(Clone, Debug, Serialize)]
pub struct WorkerStatus {
    /// Its id.
    pub id: String,
    /// Its platform properties, as `name=value`.
    pub platform: Vec<String>,
    /// How many actions it runs at once.
    pub slots: u32,
    /// The execution ids it holds.
    pub current_executions: Vec<String>,
    /// Seconds since its last call.
    pub last_seen_seconds_ago: f64,
    /// Whether a PollWork call of it is open.
    pub polling: bool,
    /// Whether it takes work or is stopping.
    pub state: WorkerState,
    /// Seconds since it started draining; absent while it takes work.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub draining_seconds: Option<f64>,
}

/// What a registered worker is doing, as the status page says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    /// It takes new work.
    Active,
    /// It is stopping: it takes no new work and finishes or gives back what
    /// it holds.
    Draining,
}

impl WorkerState {
    /// The state as the page and the JSON spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Active => "active",
            WorkerState::Draining => "draining",
        }
    }
}

/// One in-flight operation.
#[derive(Clone, Debug, Serialize)]
pub struct OperationStatus {
    /// The operation name.
    pub name: String,
    /// The REAPI instance name.
    pub instance_name: String,
    /// The Action digest, `hash/size`.
    pub action_digest: String,
    /// The platform used for matching.
    pub platform: String,
    /// ExecutionPolicy.priority.
    pub priority: i32,
    /// The tool invocation that asked first.
    pub invocation: String,
    /// RequestMetadata.action_mnemonic of the first client.
    pub mnemonic: String,
    /// RequestMetadata.target_id of the first client.
    pub target: String,
    /// Connected clients.
    pub clients: usize,
    /// Times a worker took it.
    pub attempts: u32,
    /// Seconds since it was queued.
    pub queued_seconds_ago: f64,
    /// The worker holding it, when executing.
    pub worker: Option<String>,
    /// The worker's stage, when executing.
    pub stage: Option<String>,
}

impl StatusSnapshot {
    /// A snapshot of `state` at `now`.
    pub(crate) fn of(state: &State, now: Instant) -> Self {
        let mut workers: Vec<WorkerStatus> = state
            .workers
            .values()
            .map(|w| {
                let mut current: Vec<String> = w.executions.iter().map(|e| e.to_string()).collect();
                current.sort();
                WorkerStatus {
                    id: w.id.to_string(),
                    platform: w.platform.labels(),
                    slots: w.slots,
                    current_executions: current,
                    last_seen_seconds_ago: now.saturating_duration_since(w.last_seen).as_secs_f64(),
                    polling: w.active_polls > 0,
                    state: match w.draining_since {
                        Some(_) => WorkerState::Draining,
                        None => WorkerState::Active,
                    },
                    draining_seconds: w
                        .draining_since
                        .map(|since| now.saturating_duration_since(since).as_secs_f64()),
                }
            })
            .collect();
        workers.sort_by(|a, b| a.id.cmp(&b.id));
        let mut executions: Vec<&Execution> = state.executions.values().collect();
        executions.sort_by_key(|e| e.position.seq);
        let (executing, queued): (Vec<_>, Vec<_>) = executions
            .into_iter()
            .map(|e| operation_status(e, now))
            .partition(|o| o.worker.is_some());
        StatusSnapshot {
            workers,
            queued,
            executing,
        }
    }
}

fn operation_status(e: &Execution, now: Instant) -> OperationStatus {
    let (worker, stage) = match &e.phase {
        Phase::Queued => (None, None),
        Phase::Executing(a) => (
            Some(a.worker.to_string()),
            Some(a.stage.as_str_name().to_string()),
        ),
    };
    let metadata = &e.work.request_metadata;
    OperationStatus {
        name: e.name.to_string(),
        instance_name: e.work.instance_name.to_string(),
        action_digest: e.work.loaded.digest.to_string(),
        platform: e.queue.platform.to_string(),
        priority: e.position.priority,
        invocation: e.position.invocation.to_string(),
        mnemonic: metadata.action_mnemonic.clone(),
        target: metadata.target_id.clone(),
        clients: e.clients,
        attempts: e.attempts,
        queued_seconds_ago: now.saturating_duration_since(e.queued_at).as_secs_f64(),
        worker,
        stage,
    }
}

impl Scheduler {
    /// What the status page shows, now.
    pub fn status(&self) -> StatusSnapshot {
        StatusSnapshot::of(&self.state(), Instant::now())
    }
}

#[derive(Clone)]
struct Page {
    scheduler: Scheduler,
    metrics: Option<PrometheusHandle>,
}

/// The status page and `/metrics` as an axum router. Without a handle,
/// `/metrics` answers 404.
pub fn router(scheduler: Scheduler, metrics: Option<PrometheusHandle>) -> Router {
    Router::new()
        .route("/", get(html))
        .route("/api/status", get(json_status))
        .route("/api/workers", get(json_workers))
        .route("/api/operations", get(json_operations))
        .route("/metrics", get(prometheus))
        .with_state(Page { scheduler, metrics })
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn json_status(AxumState(page): AxumState<Page>) -> Json<StatusSnapshot> {
    Json(page.scheduler.status())
}

async fn json_workers(AxumState(page): AxumState<Page>) -> Json<Vec<WorkerStatus>> {
    Json(page.scheduler.status().workers)
}

async fn json_operations(AxumState(page): AxumState<Page>) -> Json<serde_json::Value> {
    let status = page.scheduler.status();
    Json(serde_json::json!({ "queued": status.queued, "executing": status.executing }))
}

async fn prometheus(AxumState(page): AxumState<Page>) -> impl IntoResponse {
    match &page.metrics {
        Some(handle) => (
            axum::http::StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        ),
        None => (
            axum::http::StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain")],
            "no metrics recorder installed\n".to_string(),
        ),
    }
}

async fn html(AxumState(page): AxumState<Page>) -> Html<String> {
    Html(render_html(&page.scheduler.status()))
}

/// The status page as HTML.
pub fn render_html(status: &StatusSnapshot) -> String {
    let mut out = String::from(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Lazybarn scheduler</title>\
         <meta http-equiv=\"refresh\" content=\"5\"><style>body{font-family:sans-serif}\
         table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px;\
         text-align:left}</style></head><body>\n<h1>Lazybarn scheduler</h1>\n\
         <p><a href=\"/api/status\">JSON</a> · <a href=\"/metrics\">metrics</a></p>\n",
    );
    let draining = status
        .workers
        .iter()
        .filter(|w| w.state == WorkerState::Draining)
        .count();
    let _ = writeln!(
        out,
        "<h2>Workers ({}, {draining} draining)</h2>",
        status.workers.len()
    );
    let rows = status.workers.iter().map(|w| {
        let state = match w.draining_seconds {
            Some(seconds) => format!("{} for {seconds:.1} s", w.state.as_str()),
            None => w.state.as_str().to_string(),
        };
        vec![
            w.id.clone(),
            state,
            w.platform.join(", "),
            w.slots.to_string(),
            w.current_executions.join(", "),
            format!("{:.1} s ago", w.last_seen_seconds_ago),
        ]
    });
    table(
        &mut out,
        &[
            "id",
            "state",
            "platform",
            "slots",
            "current executions",
            "last seen",
        ],
        rows,
    );
    for (title, list) in [("Executing", &status.executing), ("Queued", &status.queued)] {
        let _ = writeln!(out, "<h2>{title} ({})</h2>", list.len());
        let rows = list.iter().map(|o| {
            vec![
                o.name.clone(),
                o.action_digest.clone(),
                format!("{} {}", o.mnemonic, o.target),
                o.platform.clone(),
                o.priority.to_string(),
                o.invocation.clone(),
                o.clients.to_string(),
                o.attempts.to_string(),
                format!("{:.1} s", o.queued_seconds_ago),
                match (&o.worker, &o.stage) {
                    (Some(w), Some(s)) => format!("{w} ({s})"),
                    _ => String::new(),
                },
            ]
        });
        let headers = [
            "operation",
            "action",
            "what",
            "platform",
            "priority",
            "invocation",
            "clients",
            "attempts",
            "queued",
            "worker",
        ];
        table(&mut out, &headers, rows);
    }
    out.push_str("</body></html>\n");
    out
}

fn table(out: &mut String, headers: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    out.push_str("<table><tr>");
    for h in headers {
        let _ = write!(out, "<th>{}</th>", escape(h));
    }
    out.push_str("</tr>\n");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{}</td>", escape(&cell));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
}

/// Escapes text for HTML: worker ids and targets come from the network.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escapes_what_clients_send() {
        let status = StatusSnapshot {
            workers: vec![WorkerStatus {
                id: "<script>alert(1)</script>".into(),
                platform: vec!["OSFamily=linux".into()],
                slots: 4,
                current_executions: vec![],
                last_seen_seconds_ago: 0.5,
                polling: true,
                state: WorkerState::Active,
                draining_seconds: None,
            }],
            queued: vec![],
            executing: vec![],
        };
        let html = render_html(&status);
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(!html.contains("<script>"));
        assert!(html.contains("OSFamily=linux"));
    }

    #[test]
    fn a_draining_worker_is_shown_as_such() {
        let worker = |id: &str, draining_seconds: Option<f64>| WorkerStatus {
            id: id.into(),
            platform: vec![],
            slots: 1,
            current_executions: vec![],
            last_seen_seconds_ago: 0.0,
            polling: false,
            state: match draining_seconds {
                Some(_) => WorkerState::Draining,
                None => WorkerState::Active,
            },
            draining_seconds,
        };
        let status = StatusSnapshot {
            workers: vec![worker("busy", None), worker("leaving", Some(2.0))],
            queued: vec![],
            executing: vec![],
        };
        let html = render_html(&status);
        assert!(html.contains("(2, 1 draining)"), "{html}");
        assert!(html.contains("<td>draining for 2.0 s</td>"), "{html}");
        assert!(html.contains("<td>active</td>"), "{html}");
        let json = serde_json::to_value(&status).expect("serializes");
        assert_eq!(json["workers"][0]["state"], "active");
        assert!(json["workers"][0].get("draining_seconds").is_none());
        assert_eq!(json["workers"][1]["state"], "draining");
        assert_eq!(json["workers"][1]["draining_seconds"], 2.0);
    }
}
