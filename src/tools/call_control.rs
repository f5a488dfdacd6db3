//! Call control the model can ask for. `end_call`: the agent says its goodbye and the call
//! ends once that reply has been heard (a browser's session gets `end`, a phone line is hung
//! up). The tool itself only answers the model; the call runner sees the call in the
//! conversation's events and ends the call when that reply ends unbroken (a caller who talks
//! over the goodbye keeps the call).

use async_trait::async_trait;
use serde_json::json;

use crate::llm::{ToolCall, ToolEffect, ToolExecutor, ToolSpec};

/// The name of the tool that ends the call.
pub const END_CALL: &str = "end_call";

/// The call-control tools.
#[derive(Debug, Default, Clone)]
pub struct CallControl;

#[async_trait]
impl ToolExecutor for CallControl {
    fn specs(&self) -> Vec<ToolSpec> {
        vec![ToolSpec {
            name: END_CALL.into(),
            description: "Ends the call once your reply is spoken. Use it when the caller is done or says goodbye; reply with a short goodbye.".into(),
            parameters: json!({
                "type": "object",
                "properties": {"reason": {"type": "string", "description": "Why the call ends, for the logs"}}
            }),
            // It ends the call: never on a guess.
            effect: ToolEffect::SideEffecting,
        }]
    }

    async fn call(&self, call: &ToolCall) -> Result<String, String> {
        match call.name.as_str() {
            END_CALL => {
                Ok("The call ends once this reply has been heard: say a short goodbye now.".into())
            }
            other => Err(format!("no call-control tool named {other}")),
        }
    }
}
