//! PCM audio: frames, G.711 (mu-law, A-law) codecs, sample decoding, WAV in and out,
//! conversion between sample rates (`resample`), and Opus with loss recovery for WebRTC
//! (`opus`, feature `opus`).
//!
//! Internally turnflow moves 16-bit mono PCM; encodings only matter at the Flux edge (what we
//! send, what the emulator decodes) and in files.

use std::io::Write;
use std::path::Path;

#[cfg(feature = "opus")]
pub mod opus;
pub(crate) mod resample;

/// Raw audio encodings: what a caller sends, what Flux takes (its spelling is `as_str`, parsed
/// with Flux's validation in `flux::options`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// 16-bit signed little-endian PCM.
    Linear16,
    /// 32-bit float little-endian PCM.
    Linear32,
    /// G.711 mu-law, 8 bits per sample.
    Mulaw,
    /// G.711 A-law, 8 bits per sample.
    Alaw,
    /// Raw Opus packets.
    Opus,
    /// Opus in Ogg pages.
    OggOpus,
}

impl Encoding {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Linear16 => "linear16",
            Encoding::Linear32 => "linear32",
            Encoding::Mulaw => "mulaw",
            Encoding::Alaw => "alaw",
            Encoding::Opus => "opus",
            Encoding::OggOpus => "ogg-opus",
        }
    }

    /// Bytes per sample for sample-based encodings; `None` for compressed ones, whose frames
    /// cannot be cut at arbitrary byte boundaries.
    pub fn bytes_per_sample(self) -> Option<usize> {
        match self {
            Encoding::Linear16 => Some(2),
            Encoding::Linear32 => Some(4),
            Encoding::Mulaw | Encoding::Alaw => Some(1),
            Encoding::Opus | Encoding::OggOpus => None,
        }
    }

    /// One sample of digital silence in this encoding, for sample-based encodings.
    pub fn silence_sample(self) -> Option<&'static [u8]> {
        match self {
            Encoding::Linear16 => Some(&[0, 0]),
            Encoding::Linear32 => Some(&[0, 0, 0, 0]),
            Encoding::Mulaw => Some(&[0xFF]),
            Encoding::Alaw => Some(&[0xD5]),
            Encoding::Opus | Encoding::OggOpus => None,
        }
    }
}

/// Linear 16-bit sample to G.711 mu-law.
pub fn mulaw_encode(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32635;
    let mut s = i32::from(sample);
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(CLIP) + BIAS;
    let exponent = (31 - (s as u32).leading_zeros()).saturating_sub(7).min(7) as i32;
    let mantissa = (s >> (exponent + 3)) & 0x0F;
    !(sign | (exponent << 4) as u8 | mantissa as u8)
}

/// G.711 mu-law to linear 16-bit.
pub fn mulaw_decode(byte: u8) -> i16 {
    let b = !byte;
    let sign = b & 0x80;
    let exponent = i32::from((b >> 4) & 0x07);
    let mantissa = i32::from(b & 0x0F);
    let magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84;
    (if sign != 0 { -magnitude } else { magnitude }) as i16
}

/// Linear 16-bit sample to G.711 A-law.
pub fn alaw_encode(sample: i16) -> u8 {
    let mut s = i32::from(sample) >> 3;
    let sign = if s >= 0 {
        0x80
    } else {
        s = -s - 1;
        0
    };
    let s = s.min(0x0FFF);
    let byte = if s < 32 {
        (s >> 1) as u8
    } else {
        let segment = (31 - (s as u32).leading_zeros()) as i32 - 4;
        ((segment << 4) | ((s >> segment) & 0x0F)) as u8
    };
    (byte | sign) ^ 0x55
}

/// G.711 A-law to linear 16-bit.
pub fn alaw_decode(byte: u8) -> i16 {
    let b = byte ^ 0x55;
    let sign = b & 0x80;
    let exponent = i32::from((b >> 4) & 0x07);
    let mantissa = i32::from(b & 0x0F);
    let magnitude = if exponent == 0 {
        (mantissa << 4) + 8
    } else {
        ((mantissa << 4) + 0x108) << (exponent - 1)
    };
    (if sign != 0 { magnitude } else { -magnitude }) as i16
}

/// Decodes raw audio of a sample-based encoding into 16-bit samples, appending to `out`.
/// Trailing bytes that do not make a whole sample are ignored.
pub fn decode_into(encoding: Encoding, bytes: &[u8], out: &mut Vec<i16>) {
    match encoding {
        Encoding::Linear16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]])),
        ),
        Encoding::Linear32 => out.extend(bytes.chunks_exact(4).map(|c| {
            let v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            (v.clamp(-1.0, 1.0) * 32767.0) as i16
        })),
        Encoding::Mulaw => out.extend(bytes.iter().map(|&b| mulaw_decode(b))),
        Encoding::Alaw => out.extend(bytes.iter().map(|&b| alaw_decode(b))),
        Encoding::Opus | Encoding::OggOpus => {}
    }
}

/// Encodes 16-bit samples into `encoding` (sample-based encodings only).
pub fn encode(encoding: Encoding, samples: &[i16]) -> Vec<u8> {
    match encoding {
        // One allocation of the exact size: collecting a flat map grows the vector from empty
        // byte by byte (it was a visible part of the server's CPU, once per 20 ms frame).
        Encoding::Linear16 => {
            let mut out = Vec::with_capacity(samples.len() * 2);
            for s in samples {
                out.extend_from_slice(&s.to_le_bytes());
            }
            out
        }
        Encoding::Linear32 => {
            let mut out = Vec::with_capacity(samples.len() * 4);
            for &s in samples {
                out.extend_from_slice(&(f32::from(s) / 32768.0).to_le_bytes());
            }
            out
        }
        Encoding::Mulaw => samples.iter().map(|&s| mulaw_encode(s)).collect(),
        Encoding::Alaw => samples.iter().map(|&s| alaw_encode(s)).collect(),
        Encoding::Opus | Encoding::OggOpus => Vec::new(),
    }
}

/// What a WAV header declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WavFormat {
    /// Encoding of the samples in the data chunk.
    pub encoding: Encoding,
    /// Samples per second.
    pub sample_rate: u32,
    /// Channels (Flux wants 1).
    pub channels: u16,
}

/// Why a WAV header was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("unsupported wav: {0}")]
pub struct WavError(pub String);

/// `WAVE_FORMAT_EXTENSIBLE`: the format tag is in the sub-format GUID.
const WAVE_FORMAT_EXTENSIBLE: u16 = 0xFFFE;

/// Parses a WAV header at the start of `bytes` (plain or extensible `fmt `). Returns
/// `Ok(None)` when more bytes are needed, else the format and the offset where sample data
/// starts.
///
/// # Errors
/// [`WavError`] for anything but RIFF/WAVE with PCM16, float32, mu-law or A-law samples.
pub fn parse_wav_header(bytes: &[u8]) -> Result<Option<(WavFormat, usize)>, WavError> {
    if bytes.len() < 12 {
        return Ok(None);
    }
    if &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(WavError("not a RIFF/WAVE container".into()));
    }
    let mut pos = 12;
    let mut format = None;
    loop {
        if bytes.len() < pos + 8 {
            return Ok(None);
        }
        let id = &bytes[pos..pos + 4];
        let len = u32::from_le_bytes([
            bytes[pos + 4],
            bytes[pos + 5],
            bytes[pos + 6],
            bytes[pos + 7],
        ]) as usize;
        let body = pos + 8;
        if id == b"data" {
            return match format {
                Some(f) => Ok(Some((f, body))),
                None => Err(WavError("data chunk before fmt chunk".into())),
            };
        }
        let Some(end) = body.checked_add(len) else {
            return Err(WavError(format!("chunk length {len} is out of range")));
        };
        if bytes.len() < end {
            return Ok(None);
        }
        if id == b"fmt " {
            if len < 16 {
                return Err(WavError("fmt chunk shorter than 16 bytes".into()));
            }
            let f = &bytes[body..end];
            let mut tag = u16::from_le_bytes([f[0], f[1]]);
            if tag == WAVE_FORMAT_EXTENSIBLE {
                // The real format is the first two bytes of the sub-format GUID.
                if len < 40 {
                    return Err(WavError(format!(
                        "extensible fmt chunk of {len} bytes; it needs 40"
                    )));
                }
                tag = u16::from_le_bytes([f[24], f[25]]);
            }
            let channels = u16::from_le_bytes([f[2], f[3]]);
            let sample_rate = u32::from_le_bytes([f[4], f[5], f[6], f[7]]);
            let bits = u16::from_le_bytes([f[14], f[15]]);
            let encoding = match (tag, bits) {
                (1, 16) => Encoding::Linear16,
                (3, 32) => Encoding::Linear32,
                (6, 8) => Encoding::Alaw,
                (7, 8) => Encoding::Mulaw,
                _ => {
                    return Err(WavError(format!(
                        "format tag {tag} with {bits} bits; supported: PCM 16-bit, float 32-bit, A-law, mu-law"
                    )));
                }
            };
            format = Some(WavFormat {
                encoding,
                sample_rate,
                channels,
            });
        }
        pos = end + (len & 1);
    }
}

/// A 44-byte PCM16 WAV header for `samples` samples per channel. Sizes beyond what the
/// format's 32-bit fields hold (recordings of more than about 18 hours of 16 kHz stereo) are
/// written as `0xFFFFFFFF`, which readers take as "to the end of the file".
pub fn wav_header(sample_rate: u32, channels: u16, samples: u64) -> [u8; 44] {
    let data_len = samples
        .checked_mul(u64::from(channels) * 2)
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| n.checked_add(36).is_some())
        .unwrap_or(u32::MAX);
    let riff_len = data_len.saturating_add(36);
    let byte_rate = sample_rate.saturating_mul(u32::from(channels) * 2);
    let mut h = [0u8; 44];
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&riff_len.to_le_bytes());
    h[8..12].copy_from_slice(b"WAVE");
    h[12..16].copy_from_slice(b"fmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&1u16.to_le_bytes());
    h[22..24].copy_from_slice(&channels.to_le_bytes());
    h[24..28].copy_from_slice(&sample_rate.to_le_bytes());
    h[28..32].copy_from_slice(&byte_rate.to_le_bytes());
    h[32..34].copy_from_slice(&channels.saturating_mul(2).to_le_bytes());
    h[34..36].copy_from_slice(&16u16.to_le_bytes());
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data_len.to_le_bytes());
    h
}

/// Writes interleaved PCM16 samples as a WAV file.
///
/// # Errors
/// I/O errors from creating or writing the file.
pub fn write_wav(
    path: &Path,
    sample_rate: u32,
    channels: u16,
    interleaved: &[i16],
) -> std::io::Result<()> {
    write_wav_to(
        std::fs::File::create(path)?,
        sample_rate,
        channels,
        interleaved,
    )
}

/// Like [`write_wav`], into a file already open for writing.
///
/// # Errors
/// I/O errors from writing the file.
pub fn write_wav_to(
    file: std::fs::File,
    sample_rate: u32,
    channels: u16,
    interleaved: &[i16],
) -> std::io::Result<()> {
    let frames = (interleaved.len() / usize::from(channels.max(1))) as u64;
    let mut file = std::io::BufWriter::new(file);
    file.write_all(&wav_header(sample_rate, channels, frames))?;
    for s in interleaved {
        file.write_all(&s.to_le_bytes())?;
    }
    file.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn g711_known_values() {
        assert_eq!(mulaw_encode(0), 0xFF);
        assert_eq!(mulaw_decode(0xFF), 0);
        assert_eq!(mulaw_encode(i16::MAX), 0x80);
        assert_eq!(mulaw_encode(i16::MIN), 0x00);
        assert_eq!(alaw_encode(0), 0xD5);
        assert_eq!(alaw_decode(0xD5), 8);
    }

    proptest! {
        #[test]
        fn mulaw_round_trip_error_is_bounded(s in any::<i16>()) {
            let back = mulaw_decode(mulaw_encode(s));
            let err = (i32::from(s) - i32::from(back)).abs();
            // Quantisation step grows with magnitude: 1/16 of the value plus the bias region.
            prop_assert!(err <= i32::from(s).abs() / 16 + 140, "{s} -> {back}");
        }

        #[test]
        fn alaw_round_trip_error_is_bounded(s in any::<i16>()) {
            let back = alaw_decode(alaw_encode(s));
            let err = (i32::from(s) - i32::from(back)).abs();
            prop_assert!(err <= i32::from(s).abs() / 16 + 16, "{s} -> {back}");
        }

        #[test]
        fn linear16_round_trips(samples in proptest::collection::vec(any::<i16>(), 0..64)) {
            let mut out = Vec::new();
            decode_into(Encoding::Linear16, &encode(Encoding::Linear16, &samples), &mut out);
            prop_assert_eq!(out, samples);
        }
    }

    #[test]
    fn wav_header_round_trips_and_rejects_stereo_formats_it_cannot_read() {
        let h = wav_header(16000, 1, 100);
        assert_eq!(parse_wav_header(&h[..20]), Ok(None));
        let (format, offset) = parse_wav_header(&h).unwrap().unwrap();
        assert_eq!(
            format,
            WavFormat {
                encoding: Encoding::Linear16,
                sample_rate: 16000,
                channels: 1
            }
        );
        assert_eq!(offset, 44);
        let mut bad = h;
        bad[20] = 2; // ADPCM
        assert!(
            parse_wav_header(&bad)
                .unwrap_err()
                .0
                .contains("format tag 2")
        );
        assert!(parse_wav_header(b"OggS\0\0\0\0\0\0\0\0").is_err());
    }

    #[test]
    fn extensible_headers_are_read_by_their_sub_format() {
        let mut h = Vec::new();
        h.extend_from_slice(b"RIFF\0\0\0\0WAVEfmt ");
        h.extend_from_slice(&40u32.to_le_bytes());
        h.extend_from_slice(&0xFFFEu16.to_le_bytes());
        h.extend_from_slice(&1u16.to_le_bytes());
        h.extend_from_slice(&16000u32.to_le_bytes());
        h.extend_from_slice(&32000u32.to_le_bytes());
        h.extend_from_slice(&2u16.to_le_bytes());
        h.extend_from_slice(&16u16.to_le_bytes());
        h.extend_from_slice(&22u16.to_le_bytes()); // cbSize
        h.extend_from_slice(&16u16.to_le_bytes()); // valid bits
        h.extend_from_slice(&4u32.to_le_bytes()); // channel mask
        h.extend_from_slice(&[
            1, 0, 0, 0, 0, 0, 0x10, 0, 0x80, 0, 0, 0xAA, 0, 0x38, 0x9B, 0x71,
        ]);
        h.extend_from_slice(b"data\0\0\0\0");
        let (format, offset) = parse_wav_header(&h).unwrap().unwrap();
        assert_eq!(
            (format.encoding, format.sample_rate, format.channels, offset),
            (Encoding::Linear16, 16000, 1, h.len())
        );
        let short = {
            let mut s = h.clone();
            s[16] = 18;
            s
        };
        assert!(parse_wav_header(&short).unwrap_err().0.contains("needs 40"));
    }

    #[test]
    fn headers_of_very_long_recordings_saturate_instead_of_wrapping() {
        let day = 16000u64 * 3600 * 24;
        let h = wav_header(16000, 2, day);
        assert_eq!(h[40..44], u32::MAX.to_le_bytes());
        assert_eq!(h[4..8], u32::MAX.to_le_bytes());
        let hour = wav_header(16000, 1, 16000 * 3600);
        assert_eq!(
            u32::from_le_bytes([hour[40], hour[41], hour[42], hour[43]]),
            16000 * 3600 * 2
        );
        let mut huge = h.to_vec();
        huge[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(
            parse_wav_header(&huge).is_ok(),
            "no overflow on a huge chunk length"
        );
    }

    #[test]
    fn write_wav_writes_a_readable_file() {
        let dir = std::env::temp_dir().join(format!("turnflow-wav-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.wav");
        write_wav(&path, 8000, 2, &[1, -1, 2, -2]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let (format, offset) = parse_wav_header(&bytes).unwrap().unwrap();
        assert_eq!(format.channels, 2);
        assert_eq!(bytes.len() - offset, 8);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
