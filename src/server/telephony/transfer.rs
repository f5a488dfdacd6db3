//! Handing a phone call to a person, as each carrier documents it: Twilio updates the live call
//! with TwiML that dials the number (`POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json`,
//! form field `Twiml`, HTTP basic auth with the account and its auth token); Telnyx takes a
//! transfer command (`POST /v2/calls/{call_control_id}/actions/transfer`, JSON `{"to"}`, bearer
//! API key). The request is built apart from sending it, so its shape is tested on its own.

use base64::Engine as _;

use super::carrier::{Carrier, StreamStart};
use crate::net::ApiKey;

/// Twilio's REST API.
pub const TWILIO_API: &str = "https://api.twilio.com";
/// Telnyx's REST API.
pub const TELNYX_API: &str = "https://api.telnyx.com";

/// Where the carriers' APIs are and the credentials a transfer needs.
#[derive(Debug, Clone)]
pub struct CarrierApi {
    /// Twilio's API base (another for tests).
    pub twilio_base: String,
    /// Telnyx's API base.
    pub telnyx_base: String,
    /// Twilio's auth token (with the call's account id, the basic-auth pair).
    pub twilio_auth_token: Option<ApiKey>,
    /// Telnyx's API key.
    pub telnyx_api_key: Option<ApiKey>,
}

impl Default for CarrierApi {
    fn default() -> Self {
        Self {
            twilio_base: TWILIO_API.into(),
            telnyx_base: TELNYX_API.into(),
            twilio_auth_token: None,
            telnyx_api_key: None,
        }
    }
}

/// One HTTP request to a carrier.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct CarrierRequest {
    pub(crate) url: String,
    pub(crate) authorization: String,
    pub(crate) content_type: &'static str,
    pub(crate) body: String,
}

/// `text` percent-encoded but for `keep` and RFC 3986's unreserved characters.
fn encode(text: &str, keep: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) || keep.contains(&byte) {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// A form field's value.
fn form_value(text: &str) -> String {
    encode(text, b"")
}

/// One segment of a URL's path (a Telnyx `call_control_id` keeps its `:`).
fn path_segment(text: &str) -> String {
    encode(text, b":@")
}

/// Whether `number` is an E.164 phone number (`+` and 8 to 15 digits).
pub fn is_e164(number: &str) -> bool {
    number
        .strip_prefix('+')
        .is_some_and(|d| (8..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()))
}

/// The request that transfers the call `start` opened to `to`.
///
/// # Errors
/// What is missing to ask this carrier.
pub(crate) fn transfer_request(
    api: &CarrierApi,
    start: &StreamStart,
    to: &str,
) -> Result<CarrierRequest, String> {
    if !is_e164(to) {
        return Err(format!(
            "{to:?} is not a phone number in E.164 form (+ and 8 to 15 digits)"
        ));
    }
    match start.carrier {
        Carrier::Twilio => {
            let account = start
                .account_id
                .as_deref()
                .ok_or("the stream's start carried no accountSid")?;
            let token = api
                .twilio_auth_token
                .as_ref()
                .ok_or("a Twilio transfer needs the account's auth token (--twilio-auth-token or TWILIO_AUTH_TOKEN)")?;
            let credentials = base64::engine::general_purpose::STANDARD
                .encode(format!("{account}:{}", token.expose()));
            let twiml = format!("<Response><Dial>{to}</Dial></Response>");
            Ok(CarrierRequest {
                url: format!(
                    "{}/2010-04-01/Accounts/{}/Calls/{}.json",
                    api.twilio_base.trim_end_matches('/'),
                    path_segment(account),
                    path_segment(&start.call_id)
                ),
                authorization: format!("Basic {credentials}"),
                content_type: "application/x-www-form-urlencoded",
                body: format!("Twiml={}", form_value(&twiml)),
            })
        }
        Carrier::Telnyx => {
            let key = api
                .telnyx_api_key
                .as_ref()
                .ok_or("a Telnyx transfer needs an API key (TELNYX_API_KEY)")?;
            Ok(CarrierRequest {
                url: format!(
                    "{}/v2/calls/{}/actions/transfer",
                    api.telnyx_base.trim_end_matches('/'),
                    path_segment(&start.call_id)
                ),
                authorization: format!("Bearer {}", key.expose()),
                content_type: "application/json",
                body: serde_json::json!({ "to": to }).to_string(),
            })
        }
    }
}

/// Sends `request`.
///
/// # Errors
/// The carrier's refusal (its status and the start of its answer) or why it was not reached.
pub(crate) async fn send(client: &reqwest::Client, request: CarrierRequest) -> Result<(), String> {
    let authorization = crate::net::secret_header(&request.authorization)
        .ok_or("the credentials have characters a header cannot carry")?;
    let response = client
        .post(&request.url)
        .header(reqwest::header::AUTHORIZATION, authorization)
        .header(reqwest::header::CONTENT_TYPE, request.content_type)
        .body(request.body)
        .send()
        .await
        .map_err(|e| {
            format!(
                "the carrier could not be reached: {}",
                crate::net::describe_http_error(&e)
            )
        })?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    let excerpt: String = body.chars().take(200).collect();
    Err(format!(
        "the carrier refused the transfer (HTTP {}): {}",
        status.as_u16(),
        crate::text::Untrusted(&excerpt)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(carrier: Carrier) -> StreamStart {
        StreamStart {
            carrier,
            stream_id: "MZ1".into(),
            call_id: "CA9".into(),
            account_id: (carrier == Carrier::Twilio).then(|| "AC7".into()),
            encoding: "audio/x-mulaw".into(),
            sample_rate: 8000,
            channels: 1,
            parameters: Default::default(),
        }
    }

    #[test]
    fn each_carrier_gets_its_documented_request() {
        let api = CarrierApi {
            twilio_auth_token: Some(ApiKey::new("tok")),
            telnyx_api_key: Some(ApiKey::new("KEY1")),
            ..CarrierApi::default()
        };
        let twilio = transfer_request(&api, &start(Carrier::Twilio), "+15551234567").unwrap();
        assert_eq!(
            twilio,
            CarrierRequest {
                url: "https://api.twilio.com/2010-04-01/Accounts/AC7/Calls/CA9.json".into(),
                authorization: format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode("AC7:tok")
                ),
                content_type: "application/x-www-form-urlencoded",
                body: "Twiml=%3CResponse%3E%3CDial%3E%2B15551234567%3C%2FDial%3E%3C%2FResponse%3E"
                    .into(),
            }
        );
        let telnyx = transfer_request(&api, &start(Carrier::Telnyx), "+15551234567").unwrap();
        assert_eq!(
            telnyx.url,
            "https://api.telnyx.com/v2/calls/CA9/actions/transfer"
        );
        assert_eq!(telnyx.authorization, "Bearer KEY1");
        assert_eq!(telnyx.body, r#"{"to":"+15551234567"}"#);
    }

    #[test]
    fn what_is_missing_is_named() {
        let none = CarrierApi::default();
        let e = transfer_request(&none, &start(Carrier::Twilio), "+15551234567").unwrap_err();
        assert!(e.contains("TWILIO_AUTH_TOKEN"), "{e}");
        let e = transfer_request(&none, &start(Carrier::Telnyx), "+15551234567").unwrap_err();
        assert!(e.contains("TELNYX_API_KEY"), "{e}");
        let e = transfer_request(&none, &start(Carrier::Telnyx), "555-1234").unwrap_err();
        assert!(e.contains("E.164"), "{e}");
        assert!(is_e164("+4930123456") && !is_e164("+1") && !is_e164("15551234567"));
    }
}
