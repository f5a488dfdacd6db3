//! The demo restaurant's tools, in memory: what the scripted model of the demo calls, so that
//! the offline agent acts. `check_availability` only reads (it may run while a reply is a
//! guess); `book_table` books (it waits for the end of the turn). Each answers after a fixed
//! latency, as a backend would, and counts its calls so tests can see what was done.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::llm::{ToolCall, ToolEffect, ToolExecutor, ToolSpec};

/// Tables for each time of the evening: seats per table.
const TABLES: [u64; 6] = [2, 2, 4, 4, 6, 8];

/// The demo restaurant's booking system.
#[derive(Debug)]
pub struct DemoRestaurant {
    lookup_latency: Duration,
    booking_latency: Duration,
    bookings: Mutex<Vec<Value>>,
    lookups: AtomicU64,
}

impl Default for DemoRestaurant {
    fn default() -> Self {
        Self::new(Duration::from_millis(300), Duration::from_millis(800))
    }
}

impl DemoRestaurant {
    /// A restaurant answering lookups after `lookup_latency` and bookings after
    /// `booking_latency`.
    pub fn new(lookup_latency: Duration, booking_latency: Duration) -> Self {
        Self {
            lookup_latency,
            booking_latency,
            bookings: Mutex::new(Vec::new()),
            lookups: AtomicU64::new(0),
        }
    }

    /// Lookups made.
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }

    /// Bookings made, as their arguments.
    pub fn bookings(&self) -> Vec<Value> {
        self.bookings.lock().expect("bookings lock").clone()
    }

    fn free_tables(&self, time: &str, people: u64) -> usize {
        let booked = self
            .bookings
            .lock()
            .expect("bookings lock")
            .iter()
            .filter(|b| b["time"] == time)
            .count();
        TABLES
            .iter()
            .filter(|seats| **seats >= people)
            .count()
            .saturating_sub(booked)
    }
}

fn party(arguments: &Value) -> Result<(u64, String), String> {
    let people = arguments["people"]
        .as_u64()
        .filter(|n| (1..=12).contains(n))
        .ok_or("people must be a whole number from 1 to 12")?;
    let time = arguments["time"]
        .as_str()
        .filter(|t| !t.trim().is_empty())
        .ok_or("time must be given, e.g. \"19:00\"")?;
    Ok((people, time.trim().to_owned()))
}

#[async_trait]
impl ToolExecutor for DemoRestaurant {
    fn specs(&self) -> Vec<ToolSpec> {
        let party = json!({
            "people": {"type": "integer", "minimum": 1, "maximum": 12, "description": "How many people"},
            "time": {"type": "string", "description": "Time of the booking, 24-hour, e.g. 19:00"}
        });
        let mut booking = party.clone();
        booking["name"] = json!({"type": "string", "description": "Whose name the table is under"});
        vec![
            ToolSpec {
                name: "check_availability".into(),
                description: "How many tables are free for a party at a time tonight.".into(),
                parameters: json!({"type": "object", "properties": party, "required": ["people", "time"]}),
                effect: ToolEffect::Pure,
            },
            ToolSpec {
                name: "book_table".into(),
                description: "Books a table tonight for a party at a time, under a name.".into(),
                parameters: json!({"type": "object", "properties": booking, "required": ["name", "people", "time"]}),
                effect: ToolEffect::SideEffecting,
            },
        ]
    }

    async fn call(&self, call: &ToolCall) -> Result<String, String> {
        match call.name.as_str() {
            "check_availability" => {
                self.lookups.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(self.lookup_latency).await;
                let (people, time) = party(&call.arguments)?;
                let free = self.free_tables(&time, people);
                Ok(json!({"time": time, "people": people, "free_tables": free}).to_string())
            }
            "book_table" => {
                let (people, time) = party(&call.arguments)?;
                let name = call.arguments["name"]
                    .as_str()
                    .filter(|n| !n.trim().is_empty())
                    .ok_or("name must be given")?
                    .trim()
                    .to_owned();
                tokio::time::sleep(self.booking_latency).await;
                if self.free_tables(&time, people) == 0 {
                    return Err(format!("no table for {people} is free at {time}"));
                }
                let booking = json!({"name": name, "people": people, "time": time});
                self.bookings
                    .lock()
                    .expect("bookings lock")
                    .push(booking.clone());
                Ok(json!({"booked": booking}).to_string())
            }
            other => Err(format!("no tool named {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, arguments: Value) -> ToolCall {
        ToolCall {
            id: "c".into(),
            name: name.into(),
            arguments,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn lookups_read_and_bookings_take_a_table() {
        let r = DemoRestaurant::default();
        let free =
            |text: String| serde_json::from_str::<Value>(&text).unwrap()["free_tables"].clone();
        let ask = call("check_availability", json!({"people": 8, "time": "19:00"}));
        assert_eq!(free(r.call(&ask).await.unwrap()), 1);
        let book = call(
            "book_table",
            json!({"name": "Jordan", "people": 8, "time": "19:00"}),
        );
        r.call(&book).await.unwrap();
        assert_eq!(free(r.call(&ask).await.unwrap()), 0);
        let again = r.call(&book).await.unwrap_err();
        assert!(again.contains("no table for 8"), "{again}");
        assert_eq!((r.lookups(), r.bookings().len()), (2, 1));
        let bad = r
            .call(&call(
                "book_table",
                json!({"people": 40, "time": "19:00", "name": "x"}),
            ))
            .await;
        assert!(bad.unwrap_err().contains("1 to 12"));
    }
}
