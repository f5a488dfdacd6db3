//! Listen options: the query parameters of `/v2/listen`, validated before any network I/O.
//!
//! One source of truth for client and emulator: the client renders [`ListenOptions`] into a
//! query string, the emulator parses a query string back with [`ListenOptions::from_query`] and
//! answers HTTP 400 with the same error text the client would have raised locally.
//!
//! Ranges follow Deepgram's `/v2/listen` reference (the newest documented ranges:
//! `eot_threshold` up to 1.0, `eot_timeout_ms` up to 60000).

use std::fmt;
use std::str::FromStr;

use super::messages::{Configure, Thresholds};
pub use crate::audio::Encoding;

/// An option that Flux would refuse, named with its value and what is allowed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid {parameter}={value:?}: {allowed}")]
pub struct OptionsError {
    /// The query parameter (or Configure field) at fault.
    pub parameter: &'static str,
    /// The value that was given.
    pub value: String,
    /// What would have been accepted.
    pub allowed: String,
}

impl OptionsError {
    pub(crate) fn new(
        parameter: &'static str,
        value: impl fmt::Display,
        allowed: impl Into<String>,
    ) -> Self {
        Self {
            parameter,
            value: value.to_string(),
            allowed: allowed.into(),
        }
    }
}

/// The Flux models. The model selects the language; there is no `language` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FluxModel {
    /// English.
    #[default]
    GeneralEn,
    /// Multilingual (accepts `language_hint`).
    GeneralMulti,
}

impl FluxModel {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FluxModel::GeneralEn => "flux-general-en",
            FluxModel::GeneralMulti => "flux-general-multi",
        }
    }
}

impl FromStr for FluxModel {
    type Err = OptionsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "flux-general-en" => Ok(FluxModel::GeneralEn),
            "flux-general-multi" => Ok(FluxModel::GeneralMulti),
            other => Err(OptionsError::new(
                "model",
                other,
                "/v2/listen serves Flux models only: use flux-general-en or flux-general-multi \
                 (nova and whisper models are served by /v1/listen)",
            )),
        }
    }
}

const ENCODINGS: &str = "linear16, linear32, mulaw, alaw, opus, ogg-opus";

impl FromStr for Encoding {
    type Err = OptionsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "linear16" => Encoding::Linear16,
            "linear32" => Encoding::Linear32,
            "mulaw" => Encoding::Mulaw,
            "alaw" => Encoding::Alaw,
            "opus" => Encoding::Opus,
            "ogg-opus" => Encoding::OggOpus,
            other => {
                return Err(OptionsError::new(
                    "encoding",
                    other,
                    format!("one of {ENCODINGS}; omit it for containerized audio"),
                ));
            }
        })
    }
}

/// Redaction modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redact {
    /// Redact numbers.
    Numbers,
    /// Redact numbers more aggressively.
    AggressiveNumbers,
}

impl Redact {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Redact::Numbers => "numbers",
            Redact::AggressiveNumbers => "aggressive_numbers",
        }
    }
}

/// Sample rates Flux accepts for raw audio.
pub const SAMPLE_RATES: [u32; 5] = [8000, 16000, 24000, 44100, 48000];
/// Languages accepted by `language_hint` (locale subtags such as `pt-BR` map to the base).
pub const LANGUAGE_HINTS: [&str; 10] = ["en", "es", "fr", "de", "hi", "ru", "pt", "ja", "it", "nl"];
/// Longest accepted `tag`.
pub const MAX_TAG_LEN: usize = 128;
/// Most key terms accepted by `Configure`.
pub const MAX_KEYTERMS: usize = 100;

/// Every query parameter of `/v2/listen`.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ListenOptions {
    /// The model; required.
    pub model: FluxModel,
    /// Raw audio encoding; `None` for containerized audio (WAV, Ogg, WebM).
    pub encoding: Option<Encoding>,
    /// Raw audio sample rate; `None` for containerized audio.
    pub sample_rate: Option<u32>,
    /// Enables `EagerEndOfTurn`/`TurnResumed` when set (0.3 to 0.9).
    pub eager_eot_threshold: Option<f64>,
    /// End-of-turn threshold (0.5 to 1.0; server default 0.7).
    pub eot_threshold: Option<f64>,
    /// Forced end of turn after this much post-speech audio (500 to 60000; default 5000).
    pub eot_timeout_ms: Option<u64>,
    /// Key terms, one `keyterm=` parameter each.
    pub keyterms: Vec<String>,
    /// Language hints (`flux-general-multi` only), one `language_hint=` each.
    pub language_hints: Vec<String>,
    /// Format numbers as digits.
    pub numerals: Option<bool>,
    /// Profanity filter (accepted by the reference; effect on Flux undocumented).
    pub profanity_filter: Option<bool>,
    /// Redaction mode.
    pub redact: Option<Redact>,
    /// Model Improvement Program opt-out.
    pub mip_opt_out: Option<bool>,
    /// Usage-report labels, one `tag=` each.
    pub tags: Vec<String>,
}

impl Default for ListenOptions {
    fn default() -> Self {
        Self::raw(Encoding::Linear16, 16000)
    }
}

impl ListenOptions {
    /// Options for raw audio in `encoding` at `sample_rate` on `flux-general-en`.
    pub fn raw(encoding: Encoding, sample_rate: u32) -> Self {
        Self {
            model: FluxModel::GeneralEn,
            encoding: Some(encoding),
            sample_rate: Some(sample_rate),
            eager_eot_threshold: None,
            eot_threshold: None,
            eot_timeout_ms: None,
            keyterms: Vec::new(),
            language_hints: Vec::new(),
            numerals: None,
            profanity_filter: None,
            redact: None,
            mip_opt_out: None,
            tags: Vec::new(),
        }
    }

    /// These options with the end-of-turn thresholds of `thresholds` (each field as given,
    /// unset ones unset).
    pub fn with_thresholds(mut self, thresholds: super::messages::Thresholds) -> Self {
        self.eager_eot_threshold = thresholds.eager_eot_threshold;
        self.eot_threshold = thresholds.eot_threshold;
        self.eot_timeout_ms = thresholds.eot_timeout_ms;
        self
    }

    /// Options for containerized audio (format read from the container header).
    pub fn containerized() -> Self {
        Self {
            encoding: None,
            sample_rate: None,
            ..Self::default()
        }
    }

    /// The effective end-of-turn threshold (server default 0.7).
    pub fn effective_eot_threshold(&self) -> f64 {
        self.eot_threshold.unwrap_or(0.7)
    }

    /// The effective end-of-turn timeout (server default 5000 ms).
    pub fn effective_eot_timeout_ms(&self) -> u64 {
        self.eot_timeout_ms.unwrap_or(5000)
    }

    /// Checks every rule of the `/v2/listen` reference on these parameters: sample rates and
    /// encodings, the threshold ranges above, keyterms and tags.
    ///
    /// # Errors
    /// The first [`OptionsError`] found, naming parameter, value and what is allowed.
    pub fn validate(&self) -> Result<(), OptionsError> {
        match (self.encoding, self.sample_rate) {
            (Some(_), Some(rate)) if !SAMPLE_RATES.contains(&rate) => {
                return Err(OptionsError::new(
                    "sample_rate",
                    rate,
                    "one of 8000, 16000, 24000, 44100, 48000",
                ));
            }
            (Some(e), None) => {
                return Err(OptionsError::new(
                    "sample_rate",
                    "(missing)",
                    format!(
                        "raw audio (encoding={}) needs sample_rate too; omit both for containerized audio",
                        e.as_str()
                    ),
                ));
            }
            (None, Some(rate)) => {
                return Err(OptionsError::new(
                    "sample_rate",
                    rate,
                    "only with encoding; containerized audio (no encoding) must omit sample_rate",
                ));
            }
            _ => {}
        }
        validate_thresholds(
            self.model,
            Thresholds {
                eager_eot_threshold: self.eager_eot_threshold,
                eot_threshold: self.eot_threshold,
                eot_timeout_ms: self.eot_timeout_ms,
            },
        )?;
        validate_keyterms(&self.keyterms)?;
        validate_language_hints(self.model, &self.language_hints)?;
        for tag in &self.tags {
            if tag.is_empty() || tag.chars().count() > MAX_TAG_LEN {
                return Err(OptionsError::new(
                    "tag",
                    tag,
                    format!("1 to {MAX_TAG_LEN} characters"),
                ));
            }
        }
        Ok(())
    }

    /// Renders the query string (without `?`). Booleans are lowercase, numbers plain, repeated
    /// parameters repeated.
    pub fn to_query(&self) -> String {
        let mut q = Query::default();
        q.push("model", self.model.as_str());
        if let Some(e) = self.encoding {
            q.push("encoding", e.as_str());
        }
        if let Some(r) = self.sample_rate {
            q.push("sample_rate", &r.to_string());
        }
        if let Some(v) = self.eager_eot_threshold {
            q.push("eager_eot_threshold", &v.to_string());
        }
        if let Some(v) = self.eot_threshold {
            q.push("eot_threshold", &v.to_string());
        }
        if let Some(v) = self.eot_timeout_ms {
            q.push("eot_timeout_ms", &v.to_string());
        }
        for k in &self.keyterms {
            q.push("keyterm", k);
        }
        for l in &self.language_hints {
            q.push("language_hint", l);
        }
        for (name, flag) in [
            ("numerals", self.numerals),
            ("profanity_filter", self.profanity_filter),
            ("mip_opt_out", self.mip_opt_out),
        ] {
            if let Some(b) = flag {
                q.push(name, if b { "true" } else { "false" });
            }
        }
        if let Some(r) = self.redact {
            q.push("redact", r.as_str());
        }
        for t in &self.tags {
            q.push("tag", t);
        }
        q.0
    }

    /// Parses and validates a query string as the server would.
    ///
    /// # Errors
    /// [`OptionsError`] for a missing model, an unknown parameter, an unparsable value or any
    /// rule of [`ListenOptions::validate`].
    pub fn from_query(query: &str) -> Result<Self, OptionsError> {
        let mut model = None;
        let mut o = ListenOptions {
            encoding: None,
            sample_rate: None,
            ..ListenOptions::default()
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode(raw_key);
            let value = percent_decode(raw_value);
            match key.as_str() {
                "model" => model = Some(value.parse::<FluxModel>()?),
                "encoding" => o.encoding = Some(value.parse()?),
                "sample_rate" => {
                    o.sample_rate = Some(value.parse().map_err(|_| {
                        OptionsError::new(
                            "sample_rate",
                            &value,
                            "an integer: 8000, 16000, 24000, 44100 or 48000",
                        )
                    })?)
                }
                "eager_eot_threshold" => {
                    o.eager_eot_threshold = Some(parse_float("eager_eot_threshold", &value)?)
                }
                "eot_threshold" => o.eot_threshold = Some(parse_float("eot_threshold", &value)?),
                "eot_timeout_ms" => {
                    o.eot_timeout_ms = Some(value.parse().map_err(|_| {
                        OptionsError::new("eot_timeout_ms", &value, "an integer from 500 to 60000")
                    })?)
                }
                "keyterm" => o.keyterms.push(value),
                "language_hint" => o.language_hints.push(value),
                "numerals" => o.numerals = Some(parse_bool("numerals", &value)?),
                "profanity_filter" => {
                    o.profanity_filter = Some(parse_bool("profanity_filter", &value)?)
                }
                "mip_opt_out" => o.mip_opt_out = Some(parse_bool("mip_opt_out", &value)?),
                "redact" => {
                    o.redact = Some(match value.as_str() {
                        "numbers" => Redact::Numbers,
                        "aggressive_numbers" => Redact::AggressiveNumbers,
                        _ => {
                            return Err(OptionsError::new(
                                "redact",
                                &value,
                                "numbers or aggressive_numbers",
                            ));
                        }
                    })
                }
                "tag" => o.tags.push(value),
                _ => {
                    return Err(OptionsError::new(
                        "query",
                        &key,
                        "a /v2/listen parameter: model, encoding, sample_rate, eager_eot_threshold, \
                         eot_threshold, eot_timeout_ms, keyterm, language_hint, numerals, \
                         profanity_filter, redact, mip_opt_out, tag",
                    ));
                }
            }
        }
        o.model = model.ok_or_else(|| {
            OptionsError::new(
                "model",
                "(missing)",
                "required: flux-general-en or flux-general-multi",
            )
        })?;
        o.validate()?;
        Ok(o)
    }

    /// Validates a mid-stream update against these options and returns the options it would
    /// produce, leaving `self` untouched (updates are atomic).
    ///
    /// # Errors
    /// [`OptionsError`] naming the Configure field at fault.
    pub fn apply(&self, update: &Configure) -> Result<ListenOptions, OptionsError> {
        let mut next = self.clone();
        if let Some(t) = update.thresholds {
            next.eager_eot_threshold = t.eager_eot_threshold.or(next.eager_eot_threshold);
            next.eot_threshold = t.eot_threshold.or(next.eot_threshold);
            next.eot_timeout_ms = t.eot_timeout_ms.or(next.eot_timeout_ms);
        }
        if let Some(k) = &update.keyterms {
            if k.len() > MAX_KEYTERMS {
                return Err(OptionsError::new(
                    "keyterms",
                    format!("{} terms", k.len()),
                    format!("at most {MAX_KEYTERMS} terms"),
                ));
            }
            next.keyterms = k.clone();
        }
        if let Some(h) = &update.language_hints {
            next.language_hints = h.clone();
        }
        if let Some(n) = update.numerals {
            next.numerals = Some(n);
        }
        next.validate()?;
        Ok(next)
    }

    /// The thresholds in force, as `ConfigureSuccess` reports them.
    pub fn thresholds(&self) -> Thresholds {
        Thresholds {
            eager_eot_threshold: self.eager_eot_threshold,
            eot_threshold: Some(self.effective_eot_threshold()),
            eot_timeout_ms: Some(self.effective_eot_timeout_ms()),
        }
    }
}

fn validate_thresholds(_model: FluxModel, t: Thresholds) -> Result<(), OptionsError> {
    if let Some(v) = t.eager_eot_threshold
        && !(0.3..=0.9).contains(&v)
    {
        return Err(OptionsError::new(
            "eager_eot_threshold",
            v,
            "a number from 0.3 to 0.9",
        ));
    }
    if let Some(v) = t.eot_threshold
        && !(0.5..=1.0).contains(&v)
    {
        return Err(OptionsError::new(
            "eot_threshold",
            v,
            "a number from 0.5 to 1.0",
        ));
    }
    if let Some(v) = t.eot_timeout_ms
        && !(500..=60000).contains(&v)
    {
        return Err(OptionsError::new(
            "eot_timeout_ms",
            v,
            "an integer from 500 to 60000",
        ));
    }
    if let Some(eager) = t.eager_eot_threshold {
        let eot = t.eot_threshold.unwrap_or(0.7);
        if eager > eot {
            return Err(OptionsError::new(
                "eager_eot_threshold",
                eager,
                format!("at most eot_threshold ({eot})"),
            ));
        }
    }
    Ok(())
}

fn validate_keyterms(keyterms: &[String]) -> Result<(), OptionsError> {
    for k in keyterms {
        if k.trim().is_empty() {
            return Err(OptionsError::new("keyterm", k, "a non-empty term"));
        }
    }
    Ok(())
}

fn validate_language_hints(model: FluxModel, hints: &[String]) -> Result<(), OptionsError> {
    if model != FluxModel::GeneralMulti
        && let Some(h) = hints.first()
    {
        return Err(OptionsError::new(
            "language_hint",
            h,
            "only with model=flux-general-multi (flux-general-en rejects hints)",
        ));
    }
    for h in hints {
        let base = h.split(['-', '_']).next().unwrap_or("");
        if !LANGUAGE_HINTS.contains(&base.to_ascii_lowercase().as_str()) {
            return Err(OptionsError::new(
                "language_hint",
                h,
                "one of en, es, fr, de, hi, ru, pt, ja, it, nl (locale subtags like pt-BR allowed)",
            ));
        }
    }
    Ok(())
}

fn parse_float(parameter: &'static str, value: &str) -> Result<f64, OptionsError> {
    value
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| OptionsError::new(parameter, value, "a decimal number"))
}

fn parse_bool(parameter: &'static str, value: &str) -> Result<bool, OptionsError> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(OptionsError::new(
            parameter,
            value,
            "true or false, lowercase",
        )),
    }
}

#[derive(Default)]
pub(crate) struct Query(pub(crate) String);

impl Query {
    pub(crate) fn push(&mut self, key: &str, value: &str) {
        if !self.0.is_empty() {
            self.0.push('&');
        }
        self.0.push_str(key);
        self.0.push('=');
        percent_encode_into(value, &mut self.0);
    }
}

fn percent_encode_into(value: &str, out: &mut String) {
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
}

pub(crate) fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex_value(bytes[i + 1]), hex_value(bytes[i + 2]))
            {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_value(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(query: &str) -> OptionsError {
        ListenOptions::from_query(query).unwrap_err()
    }

    #[test]
    fn minimal_raw_query_round_trips() {
        let mut o = ListenOptions::raw(Encoding::Linear16, 16000);
        o.eot_threshold = Some(0.7);
        o.eager_eot_threshold = Some(0.5);
        o.eot_timeout_ms = Some(5000);
        o.keyterms = vec!["Acme".into(), "order number".into()];
        o.numerals = Some(true);
        o.tags = vec!["test".into()];
        let q = o.to_query();
        assert_eq!(
            q,
            "model=flux-general-en&encoding=linear16&sample_rate=16000&eager_eot_threshold=0.5\
             &eot_threshold=0.7&eot_timeout_ms=5000&keyterm=Acme&keyterm=order%20number\
             &numerals=true&tag=test"
        );
        assert_eq!(ListenOptions::from_query(&q).unwrap(), o);
    }

    #[test]
    fn plus_and_percent_decode_in_keyterms() {
        let o = ListenOptions::from_query(
            "model=flux-general-en&encoding=mulaw&sample_rate=8000&keyterm=customer+service&keyterm=caf%C3%A9",
        )
        .unwrap();
        assert_eq!(o.keyterms, vec!["customer service", "café"]);
    }

    #[test]
    fn non_flux_models_are_rejected_with_advice() {
        for model in ["nova-3", "nova-2", "flux", "whisper"] {
            let e = err(&format!(
                "model={model}&encoding=linear16&sample_rate=16000"
            ));
            assert_eq!(e.parameter, "model");
            assert_eq!(e.value, model);
            assert!(
                e.to_string()
                    .contains("flux-general-en or flux-general-multi")
            );
        }
        assert_eq!(
            err("encoding=linear16&sample_rate=16000").value,
            "(missing)"
        );
    }

    #[test]
    fn threshold_ranges() {
        let base = "model=flux-general-en&encoding=linear16&sample_rate=16000";
        for (q, parameter) in [
            ("eager_eot_threshold=0.2", "eager_eot_threshold"),
            ("eager_eot_threshold=0.95", "eager_eot_threshold"),
            ("eot_threshold=0.4", "eot_threshold"),
            ("eot_threshold=1.01", "eot_threshold"),
            ("eot_timeout_ms=499", "eot_timeout_ms"),
            ("eot_timeout_ms=60001", "eot_timeout_ms"),
            ("eot_timeout_ms=1.5", "eot_timeout_ms"),
            ("eot_threshold=high", "eot_threshold"),
            ("eot_threshold=NaN", "eot_threshold"),
            (
                "eager_eot_threshold=0.8&eot_threshold=0.6",
                "eager_eot_threshold",
            ),
            ("eager_eot_threshold=0.75", "eager_eot_threshold"),
        ] {
            assert_eq!(err(&format!("{base}&{q}")).parameter, parameter, "{q}");
        }
        for q in [
            "eager_eot_threshold=0.3&eot_threshold=1.0&eot_timeout_ms=60000",
            "eager_eot_threshold=0.9&eot_threshold=0.9&eot_timeout_ms=500",
            "eager_eot_threshold=0.7",
        ] {
            ListenOptions::from_query(&format!("{base}&{q}")).unwrap();
        }
    }

    #[test]
    fn eager_above_eot_names_both() {
        let e = err(
            "model=flux-general-en&encoding=linear16&sample_rate=16000&eager_eot_threshold=0.8&eot_threshold=0.6",
        );
        assert_eq!(
            e.to_string(),
            "invalid eager_eot_threshold=\"0.8\": at most eot_threshold (0.6)"
        );
    }

    #[test]
    fn language_hints_need_the_multi_model() {
        let e = err("model=flux-general-en&encoding=linear16&sample_rate=16000&language_hint=es");
        assert_eq!(e.parameter, "language_hint");
        assert!(e.allowed.contains("flux-general-multi"));
        let o = ListenOptions::from_query(
            "model=flux-general-multi&encoding=linear16&sample_rate=16000&language_hint=es&language_hint=pt-BR",
        )
        .unwrap();
        assert_eq!(o.language_hints, vec!["es", "pt-BR"]);
        assert_eq!(
            err("model=flux-general-multi&encoding=linear16&sample_rate=16000&language_hint=xx")
                .parameter,
            "language_hint"
        );
        assert_eq!(
            err("model=flux-general-multi&encoding=linear16&sample_rate=16000&language_hint=")
                .parameter,
            "language_hint"
        );
    }

    #[test]
    fn raw_audio_needs_both_and_containers_neither() {
        assert_eq!(
            err("model=flux-general-en&encoding=linear16").parameter,
            "sample_rate"
        );
        assert_eq!(
            err("model=flux-general-en&sample_rate=16000").parameter,
            "sample_rate"
        );
        assert_eq!(
            err("model=flux-general-en&encoding=linear16&sample_rate=22050").parameter,
            "sample_rate"
        );
        assert_eq!(
            err("model=flux-general-en&encoding=mp3&sample_rate=16000").parameter,
            "encoding"
        );
        let o = ListenOptions::from_query("model=flux-general-en").unwrap();
        assert_eq!(o, ListenOptions::containerized());
        assert_eq!(o.to_query(), "model=flux-general-en");
    }

    #[test]
    fn booleans_must_be_lowercase() {
        for flag in ["numerals", "profanity_filter", "mip_opt_out"] {
            let e = err(&format!("model=flux-general-en&{flag}=True"));
            assert_eq!(e.parameter, flag);
            assert_eq!(e.allowed, "true or false, lowercase");
        }
    }

    #[test]
    fn redact_tag_and_unknown_parameters() {
        assert_eq!(err("model=flux-general-en&redact=pii").parameter, "redact");
        let long = "x".repeat(129);
        assert_eq!(
            err(&format!("model=flux-general-en&tag={long}")).parameter,
            "tag"
        );
        let e = err("model=flux-general-en&language=en");
        assert_eq!(e.parameter, "query");
        assert_eq!(e.value, "language");
        let o = ListenOptions::from_query(
            "model=flux-general-en&redact=aggressive_numbers&tag=a&tag=b&mip_opt_out=true",
        )
        .unwrap();
        assert_eq!(o.tags, vec!["a", "b"]);
        assert_eq!(o.redact, Some(Redact::AggressiveNumbers));
    }

    #[test]
    fn configure_applies_atomically() {
        let o = ListenOptions {
            eager_eot_threshold: Some(0.5),
            ..ListenOptions::default()
        };
        let bad = Configure {
            thresholds: Some(Thresholds {
                eot_threshold: Some(0.4),
                ..Thresholds::default()
            }),
            keyterms: Some(vec!["x".into()]),
            ..Configure::default()
        };
        assert_eq!(o.apply(&bad).unwrap_err().parameter, "eot_threshold");
        let good = Configure {
            thresholds: Some(Thresholds {
                eot_threshold: Some(0.9),
                eot_timeout_ms: Some(12000),
                ..Thresholds::default()
            }),
            keyterms: Some(vec!["Zephyr Air".into()]),
            ..Configure::default()
        };
        let next = o.apply(&good).unwrap();
        assert_eq!(next.eot_threshold, Some(0.9));
        assert_eq!(next.eager_eot_threshold, Some(0.5));
        assert_eq!(next.keyterms, vec!["Zephyr Air"]);
        let too_many = Configure {
            keyterms: Some((0..101).map(|i| i.to_string()).collect()),
            ..Configure::default()
        };
        assert_eq!(o.apply(&too_many).unwrap_err().parameter, "keyterms");
        let hints = Configure {
            language_hints: Some(vec!["es".into()]),
            ..Configure::default()
        };
        assert_eq!(o.apply(&hints).unwrap_err().parameter, "language_hint");
    }
}
