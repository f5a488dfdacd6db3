//! Call control the model can ask for:
//! - `end_call`: the agent says its goodbye and the call ends once that reply has been heard
//!   (a browser's session gets `end`, a phone line is hung up);
//! - `transfer_call` (phone calls, when a number is configured): the agent says it is passing
//!   the caller on, and once that reply has been heard the carrier dials the number.
//!
//! The tools only answer the model; the call runner sees the call in the conversation's events
//! and acts when that reply ends unbroken (a caller who talks over it keeps the call as it
//! is). Both are side-effecting: never on a guess.

use async_trait::async_trait;
use serde_json::json;

use crate::llm::{ToolCall, ToolEffect, ToolExecutor, ToolSpec};

/// The name of the tool that ends the call.
pub const END_CALL: &str = "end_call";
/// The name of the tool that hands the call to a person.
pub const TRANSFER_CALL: &str = "transfer_call";

/// The call-control tools a call offers.
#[derive(Debug, Clone)]
pub struct CallControl {
    end_call: bool,
    transfer: bool,
}

impl CallControl {
    /// `end_call` alone.
    pub fn ending() -> Self {
        Self {
            end_call: true,
            transfer: false,
        }
    }

    /// `transfer_call` alone (a phone call's, with a number configured).
    pub fn transferring() -> Self {
        Self {
            end_call: false,
            transfer: true,
        }
    }
}

fn reason() -> serde_json::Value {
    json!({
        "type": "object",
        "properties": {"reason": {"type": "string", "description": "Why, for the logs"}}
    })
}

#[async_trait]
impl ToolExecutor for CallControl {
    fn specs(&self) -> Vec<ToolSpec> {
        let mut specs = Vec::new();
        if self.end_call {
            specs.push(ToolSpec {
                name: END_CALL.into(),
                description: "Ends the call once your reply is spoken. Use it when the caller is done or says goodbye; reply with a short goodbye.".into(),
                parameters: reason(),
                effect: ToolEffect::SideEffecting,
            });
        }
        if self.transfer {
            specs.push(ToolSpec {
                name: TRANSFER_CALL.into(),
                description: "Passes the caller to a person once your reply is spoken. Use it when the caller asks for a person or you cannot help; tell them in a few words that you are transferring them.".into(),
                parameters: reason(),
                effect: ToolEffect::SideEffecting,
            });
        }
        specs
    }

    async fn call(&self, call: &ToolCall) -> Result<String, String> {
        match call.name.as_str() {
            END_CALL if self.end_call => Ok(
                "The call ends once this reply has been heard: say a short goodbye now.".into(),
            ),
            TRANSFER_CALL if self.transfer => Ok(
                "The caller is passed to a person once this reply has been heard: tell them so in a few words.".into(),
            ),
            other => Err(format!("no call-control tool named {other}")),
        }
    }
}
