//! `--device cpu|cuda|cuda:N`: where the model runs.
//!
//! Parsing ([`DeviceSpec`]) is separate from opening the device ([`DeviceSpec::open`]), so that
//! clap checks the argument before anything is loaded and a CUDA context is created only by the
//! commands that run the model. A binary built without the `cuda` feature still accepts
//! `--device cuda` on the command line and then fails with a message that says how to rebuild.

use std::fmt;
use std::str::FromStr;

use anyhow::Result;
use candle_core::Device;

/// What a build without the `cuda` cargo feature says when asked for a GPU.
pub const NO_CUDA_MESSAGE: &str =
    "this build has no CUDA support; rebuild with `cargo build --release --features cuda`";

/// A parsed `--device` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// The CPU (the default).
    #[default]
    Cpu,
    /// The CUDA GPU with this ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl DeviceSpec {
    /// Opens the device: a CUDA context on that GPU, or the CPU. Fails without the `cuda`
    /// feature ([`NO_CUDA_MESSAGE`]), and with the driver's reason when the GPU cannot be
    /// opened (no driver, no such ordinal).
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(ordinal) => open_cuda(ordinal),
        }
    }

    /// Whether this is the CPU.
    pub fn is_cpu(self) -> bool {
        self == DeviceSpec::Cpu
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize) -> Result<Device> {
    use anyhow::Context;
    Device::new_cuda(ordinal).with_context(|| format!("cannot open CUDA device {ordinal}"))
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(_ordinal: usize) -> Result<Device> {
    anyhow::bail!(NO_CUDA_MESSAGE)
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// A `--device` value that is none of `cpu`, `cuda`, `cuda:N`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseDeviceError {
    input: String,
}

impl fmt::Display for ParseDeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown device {:?}: expected cpu, cuda or cuda:N (N = GPU ordinal)",
            self.input
        )
    }
}

impl std::error::Error for ParseDeviceError {}

impl FromStr for DeviceSpec {
    type Err = ParseDeviceError;

    /// `cpu`, `cuda` or `cuda:N`, in any letter case; surrounding blanks are ignored.
    fn from_str(s: &str) -> std::result::Result<DeviceSpec, ParseDeviceError> {
        let err = || ParseDeviceError {
            input: s.to_owned(),
        };
        let lower = s.trim().to_ascii_lowercase();
        match lower.as_str() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            other => {
                let digits = other.strip_prefix("cuda:").ok_or_else(err)?;
                // `usize::from_str` takes a leading `+`; an ordinal is digits only.
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(err());
                }
                digits.parse().map(DeviceSpec::Cuda).map_err(|_| err())
            }
        }
    }
}

/// Parses and opens a `--device` value: `cpu`, `cuda` (GPU 0) or `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    s.parse::<DeviceSpec>()?.open()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_cuda_and_ordinals() {
        let cases = [
            ("cpu", DeviceSpec::Cpu),
            ("CPU", DeviceSpec::Cpu),
            (" cpu ", DeviceSpec::Cpu),
            ("cuda", DeviceSpec::Cuda(0)),
            ("cuda:0", DeviceSpec::Cuda(0)),
            ("cuda:1", DeviceSpec::Cuda(1)),
            ("CUDA:12", DeviceSpec::Cuda(12)),
        ];
        for (input, expected) in cases {
            assert_eq!(input.parse::<DeviceSpec>(), Ok(expected), "{input:?}");
        }
    }

    #[test]
    fn rejects_other_values_with_the_input_in_the_message() {
        for input in [
            "", "gpu", "cuda:", "cuda:x", "cuda:-1", "cuda:+1", "cuda:1:2", "cuda1", "metal",
            "cpu:0",
        ] {
            let err = input.parse::<DeviceSpec>().unwrap_err();
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("{input:?}")) && msg.contains("cuda:N"),
                "{input:?}: {msg}"
            );
            assert!(parse_device(input).is_err(), "{input:?}");
        }
    }

    #[test]
    fn display_round_trips() {
        for spec in [DeviceSpec::Cpu, DeviceSpec::Cuda(0), DeviceSpec::Cuda(7)] {
            assert_eq!(spec.to_string().parse::<DeviceSpec>(), Ok(spec));
        }
        assert_eq!(DeviceSpec::default(), DeviceSpec::Cpu);
    }

    #[test]
    fn cpu_opens_everywhere() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert!(DeviceSpec::Cpu.is_cpu() && !DeviceSpec::Cuda(0).is_cpu());
    }

    /// Regression for builds without the feature: `--device cuda` must say how to get CUDA, not
    /// fail inside candle with "not compiled with cuda support".
    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_rebuild() {
        for input in ["cuda", "cuda:0", "cuda:3"] {
            let err = parse_device(input).unwrap_err();
            assert_eq!(err.to_string(), NO_CUDA_MESSAGE, "{input:?}");
        }
    }

    /// The clap argument as the binaries declare it: parsed by `FromStr`, default `cpu`.
    #[test]
    fn works_as_a_clap_argument() {
        use clap::Parser;
        #[derive(Parser)]
        struct Args {
            #[arg(long, default_value_t = DeviceSpec::Cpu)]
            device: DeviceSpec,
        }
        let parse = |args: &[&str]| Args::try_parse_from(args).map(|a| a.device);
        assert_eq!(parse(&["x"]).unwrap(), DeviceSpec::Cpu);
        assert_eq!(
            parse(&["x", "--device", "cuda:1"]).unwrap(),
            DeviceSpec::Cuda(1)
        );
        let err = parse(&["x", "--device", "tpu"]).unwrap_err().to_string();
        assert!(err.contains("unknown device \"tpu\""), "{err}");
    }
}
