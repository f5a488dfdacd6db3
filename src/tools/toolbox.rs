//! The agent's tools from every source in one executor: each tool under a name both model
//! providers accept (`[a-zA-Z0-9_-]{1,64}`), clashes refused when the toolbox is built, and
//! every call's arguments checked against its schema before it goes anywhere.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use async_trait::async_trait;

use super::schema::violation;
use crate::llm::{ToolCall, ToolExecutor, ToolSpec};

/// Longest tool name OpenAI and Anthropic take.
pub const MAX_TOOL_NAME: usize = 64;

/// Why a toolbox cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ToolboxError {
    /// Two tools would reach the model under one name.
    #[error(
        "two tools would both be called {name} ({first} and {second}); tool names map to [a-zA-Z0-9_-]{{1,64}}, so rename one or give its source another prefix"
    )]
    Clash {
        /// The name the model would see.
        name: String,
        /// The first tool, as its source names it.
        first: String,
        /// The second.
        second: String,
    },
    /// A name with nothing usable in it.
    #[error(
        "the tool {original:?} from {source_name} has no letter, digit, '_' or '-' to name it by"
    )]
    Unnamable {
        /// The tool's own name.
        original: String,
        /// Where it comes from.
        source_name: String,
    },
}

/// A name both providers take: characters outside `[a-zA-Z0-9_-]` become `_`, `prefix__`
/// goes first when there is one, and the whole is cut at 64 characters.
pub fn model_name(prefix: Option<&str>, name: &str) -> String {
    let clean = |text: &str| -> String {
        text.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    let full = match prefix {
        Some(p) => format!("{}__{}", clean(p), clean(name)),
        None => clean(name),
    };
    full.chars().take(MAX_TOOL_NAME).collect()
}

struct Source {
    name: String,
    prefix: Option<String>,
    executor: Arc<dyn ToolExecutor>,
}

struct Entry {
    spec: ToolSpec,
    original: String,
    source: usize,
}

/// The model's names for every source's tools, as of the sources' `revision`.
#[derive(Default)]
struct Mapping {
    revision: u64,
    entries: Vec<Entry>,
    by_name: HashMap<String, usize>,
}

impl Mapping {
    /// Adds the tools of `sources[index]`, or says why one cannot be named.
    fn add(&mut self, sources: &[Source], index: usize) -> Result<(), ToolboxError> {
        let source = &sources[index];
        for spec in source.executor.specs() {
            let name = model_name(source.prefix.as_deref(), &spec.name);
            if name.trim_matches('_').is_empty() {
                return Err(ToolboxError::Unnamable {
                    original: spec.name,
                    source_name: source.name.clone(),
                });
            }
            if let Some(&i) = self.by_name.get(&name) {
                let first = &self.entries[i];
                return Err(ToolboxError::Clash {
                    name,
                    first: format!("{} from {}", first.original, sources[first.source].name),
                    second: format!("{} from {}", spec.name, source.name),
                });
            }
            self.by_name.insert(name.clone(), self.entries.len());
            self.entries.push(Entry {
                original: spec.name.clone(),
                spec: ToolSpec { name, ..spec },
                source: index,
            });
        }
        Ok(())
    }
}

/// Tools from many sources, as one [`ToolExecutor`]. A source whose tools change (an MCP
/// server's new list) is read again on the next use; a changed tool that would clash with
/// another is left out, with a warning, since the toolbox can no longer refuse to start.
#[derive(Default)]
pub struct Toolbox {
    sources: Vec<Source>,
    mapping: RwLock<Arc<Mapping>>,
}

impl std::fmt::Debug for Toolbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.current().entries.iter().map(|e| e.spec.name.clone()))
            .finish()
    }
}

impl Toolbox {
    /// An empty toolbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds every tool of `source` (called `source_name` in errors), under `prefix__` when
    /// given.
    ///
    /// # Errors
    /// [`ToolboxError`] when a tool's name clashes with one already in, or has nothing
    /// usable in it.
    pub fn add(
        &mut self,
        source_name: &str,
        prefix: Option<&str>,
        source: Arc<dyn ToolExecutor>,
    ) -> Result<(), ToolboxError> {
        self.sources.push(Source {
            name: source_name.to_owned(),
            prefix: prefix.map(str::to_owned),
            executor: source,
        });
        let mut mapping = Mapping {
            revision: self.sources_revision(),
            ..Mapping::default()
        };
        for index in 0..self.sources.len() {
            if let Err(refused) = mapping.add(&self.sources, index) {
                self.sources.pop();
                return Err(refused);
            }
        }
        *self
            .mapping
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(mapping);
        Ok(())
    }

    /// Whether it holds no tool.
    pub fn is_empty(&self) -> bool {
        self.current().entries.is_empty()
    }

    fn sources_revision(&self) -> u64 {
        self.sources.iter().map(|s| s.executor.revision()).sum()
    }

    /// The names as of the sources' latest tools.
    fn current(&self) -> Arc<Mapping> {
        let revision = self.sources_revision();
        let held = self
            .mapping
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if held.revision == revision {
            return held;
        }
        let mut mapping = Mapping {
            revision,
            ..Mapping::default()
        };
        for index in 0..self.sources.len() {
            if let Err(refused) = mapping.add(&self.sources, index) {
                tracing::warn!(source = %self.sources[index].name, "a changed tool list is not offered in full: {refused}");
            }
        }
        let mapping = Arc::new(mapping);
        *self.mapping.write().unwrap_or_else(PoisonError::into_inner) = mapping.clone();
        mapping
    }
}

#[async_trait]
impl ToolExecutor for Toolbox {
    fn specs(&self) -> Vec<ToolSpec> {
        self.current()
            .entries
            .iter()
            .map(|e| e.spec.clone())
            .collect()
    }

    fn revision(&self) -> u64 {
        self.sources_revision()
    }

    async fn call(&self, call: &ToolCall) -> Result<String, String> {
        let mapping = self.current();
        let Some(entry) = mapping
            .by_name
            .get(&call.name)
            .map(|i| &mapping.entries[*i])
        else {
            let known: Vec<&str> = mapping
                .entries
                .iter()
                .map(|e| e.spec.name.as_str())
                .collect();
            return Err(format!(
                "there is no tool named {}; the tools are {}",
                crate::text::Untrusted(&call.name),
                known.join(", ")
            ));
        };
        if let Some(problem) = violation(&call.arguments, &entry.spec.parameters, "arguments") {
            return Err(format!(
                "the call to {} was not made: {problem}",
                entry.spec.name
            ));
        }
        let own = ToolCall {
            name: entry.original.clone(),
            ..call.clone()
        };
        self.sources[entry.source].executor.call(&own).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::ToolEffect;
    use crate::tools::DemoRestaurant;
    use serde_json::json;

    struct Named(Vec<&'static str>);

    #[async_trait]
    impl ToolExecutor for Named {
        fn specs(&self) -> Vec<ToolSpec> {
            self.0
                .iter()
                .map(|n| ToolSpec {
                    name: (*n).into(),
                    description: String::new(),
                    parameters: json!({"type": "object"}),
                    effect: ToolEffect::Pure,
                })
                .collect()
        }

        async fn call(&self, call: &ToolCall) -> Result<String, String> {
            Ok(format!("{} called", call.name))
        }
    }

    #[test]
    fn names_become_what_providers_take() {
        assert_eq!(model_name(None, "orders.lookup v2"), "orders_lookup_v2");
        assert_eq!(model_name(Some("crm"), "find"), "crm__find");
        assert_eq!(model_name(None, &"x".repeat(100)).len(), 64);
    }

    #[tokio::test]
    async fn clashes_are_refused_and_calls_reach_the_tool_by_its_own_name() {
        let mut toolbox = Toolbox::new();
        toolbox
            .add("crm", Some("crm"), Arc::new(Named(vec!["find.customer"])))
            .unwrap();
        let clash = toolbox
            .add(
                "crm-copy",
                None,
                Arc::new(Named(vec!["crm__find_customer"])),
            )
            .unwrap_err();
        assert_eq!(
            clash.to_string(),
            "two tools would both be called crm__find_customer (find.customer from crm and crm__find_customer from crm-copy); tool names map to [a-zA-Z0-9_-]{1,64}, so rename one or give its source another prefix"
        );
        assert!(matches!(
            toolbox.add("odd", None, Arc::new(Named(vec!["..."]))),
            Err(ToolboxError::Unnamable { .. })
        ));
        let call = ToolCall {
            id: "c".into(),
            name: "crm__find_customer".into(),
            arguments: json!({}),
        };
        assert_eq!(toolbox.call(&call).await.unwrap(), "find.customer called");
        let unknown = ToolCall {
            name: "delete_all".into(),
            ..call
        };
        assert_eq!(
            toolbox.call(&unknown).await.unwrap_err(),
            "there is no tool named delete_all; the tools are crm__find_customer"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_invalid_call_is_answered_and_never_made() {
        let restaurant = Arc::new(DemoRestaurant::default());
        let mut toolbox = Toolbox::new();
        toolbox.add("demo", None, restaurant.clone()).unwrap();
        let call = ToolCall {
            id: "c".into(),
            name: "book_table".into(),
            arguments: json!({"name": "Jordan", "people": "four", "time": "19:00"}),
        };
        let error = toolbox.call(&call).await.unwrap_err();
        assert_eq!(
            error,
            "the call to book_table was not made: arguments.people: expected integer, got a string (\"four\")"
        );
        assert!(restaurant.bookings().is_empty());
    }
}
