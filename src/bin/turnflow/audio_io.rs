//! Microphone and speaker through cpal (feature `audio-io`).
//!
//! Devices run at their own rate and channel count; audio is mixed down to mono and resampled
//! linearly to and from the 16 kHz the agent uses (a voice band, where linear interpolation is
//! good enough and adds no latency).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use tokio::sync::mpsc;
use turnflow::engine::AudioSink;

/// Streaming linear resampler.
struct Resampler {
    step: f64,
    position: f64,
    previous: f32,
}

impl Resampler {
    fn new(from: u32, to: u32) -> Self {
        Self {
            step: f64::from(from) / f64::from(to),
            position: 0.0,
            previous: 0.0,
        }
    }

    fn process(&mut self, input: &[f32], out: &mut Vec<f32>) {
        for &sample in input {
            while self.position < 1.0 {
                let t = self.position as f32;
                out.push(self.previous + (sample - self.previous) * t);
                self.position += self.step;
            }
            self.position -= 1.0;
            self.previous = sample;
        }
    }
}

fn stream_error(error: cpal::Error) {
    tracing::warn!(%error, "audio device error");
}

/// The default input device, delivering 16 kHz mono.
pub(crate) struct Microphone {
    _stream: cpal::Stream,
    samples: mpsc::UnboundedReceiver<Vec<f32>>,
}

impl Microphone {
    /// Opens the default microphone.
    pub(crate) fn open(rate: u32) -> Result<Self> {
        let host = cpal::default_host();
        let device = host
            .default_input_device()
            .context("no microphone: the audio host has no default input device")?;
        let supported = device
            .default_input_config()
            .context("microphone configuration")?;
        let channels = usize::from(supported.channels());
        let mut resampler = Resampler::new(supported.sample_rate(), rate);
        let (tx, samples) = mpsc::unbounded_channel();
        let mut deliver = move |mono: Vec<f32>| {
            let mut out = Vec::with_capacity(mono.len());
            resampler.process(&mono, &mut out);
            let _ = tx.send(out);
        };
        let config = supported.config();
        let stream = match supported.sample_format() {
            cpal::SampleFormat::F32 => device.build_input_stream::<f32, _, _>(
                config,
                move |data, _| {
                    deliver(
                        data.chunks(channels)
                            .map(|f| f.iter().sum::<f32>() / channels as f32)
                            .collect(),
                    )
                },
                stream_error,
                None,
            ),
            cpal::SampleFormat::I16 => device.build_input_stream::<i16, _, _>(
                config,
                move |data, _| {
                    deliver(
                        data.chunks(channels)
                            .map(|f| {
                                f.iter().map(|s| f32::from(*s) / 32768.0).sum::<f32>()
                                    / channels as f32
                            })
                            .collect(),
                    )
                },
                stream_error,
                None,
            ),
            other => bail!("microphone sample format {other:?} is not supported (f32 or i16 only)"),
        }
        .context("cannot open the microphone stream")?;
        stream.play().context("cannot start the microphone")?;
        Ok(Self {
            _stream: stream,
            samples,
        })
    }
}

/// Forwards the microphone to the conversation until Ctrl-C.
pub(crate) async fn stream_microphone(
    mut mic: Microphone,
    to_call: mpsc::Sender<Vec<i16>>,
    recorder: Option<turnflow::recording::Recorder>,
) {
    println!("listening; Ctrl-C to stop");
    loop {
        let block = tokio::select! {
            biased;
            _ = tokio::signal::ctrl_c() => break,
            block = mic.samples.recv() => block,
        };
        let Some(block) = block else { break };
        let pcm: Vec<i16> = block
            .iter()
            .map(|s| (s.clamp(-1.0, 1.0) * 32767.0) as i16)
            .collect();
        if let Some(recorder) = &recorder {
            recorder.user_audio(&pcm);
        }
        if to_call.send(pcm).await.is_err() {
            break;
        }
    }
}

/// The default output device, fed from the agent's 16 kHz mono frames.
pub(crate) struct Speaker {
    _stream: cpal::Stream,
    buffer: Arc<Mutex<VecDeque<f32>>>,
    from: u32,
    to: u32,
}

impl Speaker {
    /// Opens the default speaker.
    pub(crate) fn open(rate: u32) -> Result<Self> {
        let host = cpal::default_host();
        let device = host
            .default_output_device()
            .context("no speaker: the audio host has no default output device")?;
        let supported = device
            .default_output_config()
            .context("speaker configuration")?;
        let channels = usize::from(supported.channels());
        let buffer: Arc<Mutex<VecDeque<f32>>> = Arc::default();
        let source = buffer.clone();
        if supported.sample_format() != cpal::SampleFormat::F32 {
            bail!(
                "speaker sample format {:?} is not supported (f32 only)",
                supported.sample_format()
            );
        }
        let stream = device
            .build_output_stream::<f32, _, _>(
                supported.config(),
                move |data, _| {
                    let mut queue = source.lock().expect("speaker buffer lock");
                    for frame in data.chunks_mut(channels) {
                        let sample = queue.pop_front().unwrap_or(0.0);
                        frame.fill(sample);
                    }
                },
                stream_error,
                None,
            )
            .context("cannot open the speaker stream")?;
        stream.play().context("cannot start the speaker")?;
        Ok(Self {
            _stream: stream,
            buffer,
            from: rate,
            to: supported.sample_rate(),
        })
    }

    /// The sink the session writes to.
    pub(crate) fn sink(&self) -> SpeakerSink {
        SpeakerSink {
            buffer: self.buffer.clone(),
            resampler: Resampler::new(self.from, self.to),
        }
    }
}

/// Writes agent frames into the speaker's buffer.
pub(crate) struct SpeakerSink {
    buffer: Arc<Mutex<VecDeque<f32>>>,
    resampler: Resampler,
}

impl AudioSink for SpeakerSink {
    fn write(&mut self, frame: &[i16]) {
        let input: Vec<f32> = frame.iter().map(|s| f32::from(*s) / 32768.0).collect();
        let mut out = Vec::with_capacity(input.len() * 3);
        self.resampler.process(&input, &mut out);
        self.buffer.lock().expect("speaker buffer lock").extend(out);
    }

    /// A barge-in: what the speaker has not played yet is dropped.
    fn clear(&mut self) {
        self.buffer.lock().expect("speaker buffer lock").clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resampler_keeps_duration_and_shape() {
        let mut up = Resampler::new(16000, 48000);
        let input: Vec<f32> = (0..160).map(|i| i as f32).collect();
        let mut out = Vec::new();
        up.process(&input, &mut out);
        assert_eq!(out.len(), 480);
        assert!(
            out.windows(2).skip(3).all(|w| w[1] >= w[0]),
            "monotonic input stays monotonic"
        );
        let mut down = Resampler::new(48000, 16000);
        let mut back = Vec::new();
        down.process(&out, &mut back);
        assert_eq!(back.len(), 160);
    }
}
