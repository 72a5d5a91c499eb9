//! The sampler registry: every posterior sampler as a [`Method`] (its settings) with one way to
//! run it, and [`METHODS`] (name, summary, reference, default settings) for `daps methods`,
//! `--method`, presets and the benchmarks.
//!
//! To add a sampler: write it as a short function `fn(problem, config, shape, noise, observer)
//! -> Result<Tensor>` in its own file under `sampler/`, add a variant here (name, NFE, run), and
//! a [`METHODS`] entry.

use super::{daps, dps, DapsConfig, DpsConfig, Observer, Problem, X0Method};
use crate::error::{Error, Result};
use crate::noise::NoiseSource;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// A sampler with its settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Method {
    Daps(DapsConfig),
    Dps(DpsConfig),
}

/// One registered sampler.
#[derive(Clone, Copy)]
pub struct MethodInfo {
    /// The registry name (`--method`, presets' `method = …`).
    pub name: &'static str,
    pub summary: &'static str,
    pub reference: &'static str,
    /// The default settings.
    pub default: fn() -> Method,
}

/// Every sampler, in the order `daps methods` lists them.
pub const METHODS: [MethodInfo; 3] = [
    MethodInfo {
        name: "daps",
        summary:
            "Decoupled Annealing Posterior Sampling: PF-ODE estimate x̂0, MCMC x0 step, re-noise",
        reference: "Zhang et al., CVPR 2025 (arXiv 2407.01521), Eq. 9",
        default: || Method::Daps(DapsConfig::default()),
    },
    MethodInfo {
        name: "daps-exact",
        summary: "DAPS with the closed-form x0 step (Gaussian-mixture prior, linear operator)",
        reference: "Zhang et al., CVPR 2025, Proposition 1",
        default: || {
            Method::Daps(DapsConfig {
                x0_method: X0Method::Exact,
                ..DapsConfig::default()
            })
        },
    },
    MethodInfo {
        name: "dps",
        summary: "Diffusion Posterior Sampling: DDPM steps with the gradient of ‖y − A(x̂0(x))‖",
        reference: "Chung et al., ICLR 2023 (arXiv 2209.14687)",
        default: || Method::Dps(DpsConfig::default()),
    },
];

fn method_names() -> String {
    METHODS.map(|m| m.name).join(", ")
}

/// The registry entry of `name`, or an error listing the valid names.
pub fn method_info(name: &str) -> Result<&'static MethodInfo> {
    METHODS.iter().find(|m| m.name == name).ok_or_else(|| {
        Error::config(format!(
            "unknown method '{name}' (valid: {})",
            method_names()
        ))
    })
}

impl Method {
    /// The default settings of the sampler registered as `name`.
    pub fn from_name(name: &str) -> Result<Self> {
        Ok((method_info(name)?.default)())
    }

    /// Settings from a TOML table (a preset section): `method = NAME` (default `daps`) and that
    /// sampler's fields, the rest taking the registered defaults.
    pub fn from_table(table: &toml::Table) -> Result<Self> {
        let mut t = table.clone();
        let name = match t.remove("method") {
            None => "daps".to_string(),
            Some(toml::Value::String(s)) => s,
            Some(v) => return Err(Error::config(format!("method must be a name, got {v}"))),
        };
        let mut m = Self::from_name(&name)?;
        for (k, v) in t {
            let shown = v.to_string();
            m = m.assign(&k, v, &shown)?;
        }
        Ok(m)
    }

    /// The registry name.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Daps(c) if c.x0_method == X0Method::Exact => "daps-exact",
            Method::Daps(_) => "daps",
            Method::Dps(_) => "dps",
        }
    }

    /// Name and budget, as tables print it: `DAPS-50`, `DPS-1000`.
    pub fn label(&self) -> String {
        format!("{}-{}", self.name().to_uppercase(), self.nfe())
    }

    /// Network evaluations per chain.
    pub fn nfe(&self) -> usize {
        match self {
            Method::Daps(c) => c.nfe(),
            Method::Dps(c) => c.steps,
        }
    }

    /// Outer steps (what an [`Observer`] is told per chain batch).
    pub fn steps(&self) -> usize {
        match self {
            Method::Daps(c) => c.annealing_steps,
            Method::Dps(c) => c.steps,
        }
    }

    pub fn validate(&self) -> Result<()> {
        match self {
            Method::Daps(c) => c.validate(),
            Method::Dps(c) => c.validate(),
        }
    }

    /// Draws `x_shape[0]` chains from the posterior of `p`.
    pub fn run(
        &self,
        p: &Problem,
        x_shape: &[usize],
        noise: &mut dyn NoiseSource,
        obs: &mut dyn Observer,
    ) -> Result<Tensor> {
        match self {
            Method::Daps(c) => daps(p, c, x_shape, noise, obs),
            Method::Dps(c) => dps(p, c, x_shape, noise, obs),
        }
    }

    /// The settings as a TOML table (without `method`).
    pub fn settings(&self) -> toml::Table {
        let v = match self {
            Method::Daps(c) => toml::Table::try_from(c),
            Method::Dps(c) => toml::Table::try_from(c),
        };
        // Invariant: the configs are plain structs of numbers, strings and enums.
        v.expect("configs serialise to TOML")
    }

    /// Sets one field; `value` is read as TOML (or else as a string).
    pub fn set(&self, key: &str, value: &str) -> Result<Self> {
        let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.to_string()));
        self.assign(key, parsed, value)
    }

    /// The names of the settings, including optional ones that are unset.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.settings().keys().cloned().collect();
        if let Method::Dps(_) = self {
            if !keys.iter().any(|k| k == "clip") {
                keys.push("clip".into());
            }
        }
        keys
    }

    fn assign(&self, key: &str, value: toml::Value, shown: &str) -> Result<Self> {
        let mut table = self.settings();
        let known = self.keys();
        if !known.iter().any(|k| k == key) {
            let keys: Vec<&str> = known.iter().map(|k| k.as_str()).collect();
            return Err(Error::config(format!(
                "unknown sampler setting '{key}' for {} (settings: {})",
                self.name(),
                keys.join(", ")
            )));
        }
        table.insert(key.to_string(), value);
        let bad = |e: toml::de::Error| Error::config(format!("bad value '{shown}' for {key}: {e}"));
        Ok(match self {
            Method::Daps(_) => Method::Daps(table.try_into().map_err(bad)?),
            Method::Dps(_) => Method::Dps(table.try_into().map_err(bad)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_registered_method_round_trips_its_name() {
        for info in METHODS {
            let m = Method::from_name(info.name).unwrap();
            assert_eq!(m.name(), info.name);
            m.validate().unwrap();
            assert_eq!(m.nfe() == 0, info.name == "daps-exact", "{}", info.name);
        }
        let e = Method::from_name("ddrm").unwrap_err().to_string();
        assert!(
            e.contains("unknown method 'ddrm'") && e.contains("dps"),
            "{e}"
        );
    }

    #[test]
    fn tables_name_their_method_and_fields() {
        let t: toml::Table = toml::from_str("method = \"dps\"\nsteps = 50\nzeta = 2.0").unwrap();
        let m = Method::from_table(&t).unwrap();
        assert_eq!(
            m,
            Method::Dps(DpsConfig {
                steps: 50,
                zeta: 2.0,
                clip: None
            })
        );
        // An optional setting that is unset by default can still be given.
        let Method::Dps(c) = m.set("clip", "1.0").unwrap() else {
            panic!()
        };
        assert_eq!(c.clip, Some(1.0));
        assert_eq!((m.label(), m.nfe()), ("DPS-50".to_string(), 50));
        let t: toml::Table = toml::from_str("annealing_steps = 7\node_steps = 2").unwrap();
        let m = Method::from_table(&t).unwrap();
        assert_eq!(
            (m.name(), m.nfe(), m.label()),
            ("daps", 14, "DAPS-14".into())
        );
        let t: toml::Table = toml::from_str("method = \"dps\"\nlr = 1.0").unwrap();
        let e = Method::from_table(&t).unwrap_err().to_string();
        assert!(
            e.contains("unknown sampler setting 'lr' for dps") && e.contains("zeta"),
            "{e}"
        );
    }

    #[test]
    fn set_reads_toml_values_field_by_field() {
        let m = Method::from_name("daps").unwrap();
        let m = m
            .set("x0_method", "hmc")
            .unwrap()
            .set("lr", "3e-5")
            .unwrap();
        let Method::Daps(c) = &m else { panic!() };
        assert_eq!((c.x0_method, c.lr), (X0Method::Hmc, 3e-5));
        let e = m.set("mcmc_steps", "many").unwrap_err().to_string();
        assert!(e.contains("bad value 'many' for mcmc_steps"), "{e}");
        let d = DpsConfig {
            steps: 1000,
            zeta: 0.4,
            clip: Some(1.0),
        }
        .with_steps(50);
        assert_eq!(
            (d.steps, d.zeta, d.clip),
            (50, 0.4 * 1000.0 / 50.0, Some(1.0))
        );
    }
}
