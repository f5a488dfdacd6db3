//! The voice activity detector behind the emulator's [`TurnDetection::Vad`] mode: earshot,
//! 16 ms frames at 16 kHz. Built with the `vad` feature; without it the mode is refused at the
//! handshake with a message naming the feature.
//!
//! [`TurnDetection::Vad`]: super::TurnDetection::Vad

/// Samples per detector frame (16 ms at 16 kHz).
pub(crate) const VAD_FRAME: usize = 256;

/// Says whether one frame of 16 kHz audio is speech.
pub(crate) struct Detector {
    #[cfg(feature = "vad")]
    inner: Box<earshot::Detector>,
    /// Without the feature no detector can exist.
    #[cfg(not(feature = "vad"))]
    never: std::convert::Infallible,
}

impl Detector {
    /// A detector, or `None` when this build has no voice activity detection.
    pub(crate) fn new() -> Option<Self> {
        #[cfg(feature = "vad")]
        return Some(Self {
            inner: earshot::Detector::default_boxed(),
        });
        #[cfg(not(feature = "vad"))]
        None
    }

    /// Whether this build can detect voice activity.
    pub(crate) fn available() -> bool {
        cfg!(feature = "vad")
    }

    /// Whether `frame` ([`VAD_FRAME`] samples) is speech.
    pub(crate) fn voiced(&mut self, frame: &[i16]) -> bool {
        #[cfg(feature = "vad")]
        return self.inner.predict_i16(frame) >= 0.5;
        #[cfg(not(feature = "vad"))]
        {
            let _ = frame;
            match self.never {}
        }
    }
}
