//! The demo restaurant's tools served by an MCP server built with rmcp, the official Rust SDK:
//! what `turnflow serve --config` can point at to give the agent tools through the Model
//! Context Protocol. `check_availability` is annotated read-only (a trusted server's lookup
//! may run while a reply is still a guess); `book_table` is not (it waits for `EndOfTurn`).
//! It speaks both protocol eras: 2026-07-28 and the 2025-11-25 handshake.
//!
//! Run over stdio (what a `[[tools.mcp]]` `command` starts):
//! `cargo run --example mcp_restaurant`
//! or over Streamable HTTP:
//! `cargo run --example mcp_restaurant -- --listen 127.0.0.1:8931` (prints
//! `listening on ADDR`; the endpoint is `http://ADDR/mcp`).
//!
//! For tests and failure drills: `--bookings-log PATH` appends each booking made, one JSON
//! line; `--exit-during TOOL` exits while that tool runs, as a crashing server would.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
    ToolAnnotations,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData, ServerHandler, ServiceExt};
use turnflow::llm::{ToolCall, ToolEffect, ToolExecutor};
use turnflow::tools::DemoRestaurant;

#[derive(Clone)]
struct Restaurant {
    tables: Arc<DemoRestaurant>,
    bookings_log: Option<Arc<std::path::PathBuf>>,
    exit_during: Option<Arc<str>>,
}

impl ServerHandler for Restaurant {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("turnflow-demo-restaurant", "1.0.0"))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let tools = self
            .tables
            .specs()
            .into_iter()
            .map(|spec| {
                let serde_json::Value::Object(schema) = spec.parameters else {
                    unreachable!("the demo's parameters are objects");
                };
                let annotations = match spec.effect {
                    ToolEffect::Pure => ToolAnnotations::new().read_only(true),
                    ToolEffect::SideEffecting => ToolAnnotations::new()
                        .read_only(false)
                        .destructive(false)
                        .idempotent(false),
                };
                Tool::new(spec.name, spec.description, schema)
                    .with_annotations(annotations.open_world(false))
            })
            .collect();
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let name = request.name.to_string();
        if self.exit_during.as_deref() == Some(name.as_str()) {
            eprintln!("mcp_restaurant: exiting during {name}, as asked");
            std::process::exit(3);
        }
        let call = ToolCall {
            id: String::new(),
            name: name.clone(),
            arguments: serde_json::Value::Object(request.arguments.unwrap_or_default()),
        };
        let booked_before = self.tables.bookings().len();
        let outcome = self.tables.call(&call).await;
        if let Some(path) = &self.bookings_log
            && let Some(booking) = self.tables.bookings().get(booked_before)
        {
            let mut log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path.as_path())
                .map_err(|e| ErrorData::internal_error(format!("bookings log: {e}"), None))?;
            writeln!(log, "{booking}")
                .map_err(|e| ErrorData::internal_error(format!("bookings log: {e}"), None))?;
        }
        Ok(match outcome {
            Ok(text) => CallToolResult::success(vec![ContentBlock::text(text)]),
            Err(text) => CallToolResult::error(vec![ContentBlock::text(text)]),
        }
        .into())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut listen = None;
    let mut restaurant = Restaurant {
        tables: Arc::new(DemoRestaurant::default()),
        bookings_log: None,
        exit_during: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => listen = Some(value()?),
            "--bookings-log" => restaurant.bookings_log = Some(Arc::new(value()?.into())),
            "--exit-during" => restaurant.exit_during = Some(value()?.into()),
            other => {
                return Err(format!(
                    "unknown argument {other:?}; expected --listen ADDR, --bookings-log PATH or --exit-during TOOL"
                )
                .into());
            }
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match listen {
            None => {
                let running = restaurant.serve(rmcp::transport::stdio()).await?;
                running.waiting().await?;
            }
            Some(addr) => {
                let service: StreamableHttpService<Restaurant, LocalSessionManager> =
                    StreamableHttpService::new(
                        move || Ok(restaurant.clone()),
                        Default::default(),
                        StreamableHttpServerConfig::default()
                            .with_sse_keep_alive(Some(Duration::from_secs(15))),
                    );
                let router = axum::Router::new().nest_service("/mcp", service);
                let listener = tokio::net::TcpListener::bind(&addr).await?;
                println!("listening on {}", listener.local_addr()?);
                axum::serve(listener, router).await?;
            }
        }
        Ok(())
    })
}
