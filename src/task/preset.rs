//! The per-task sampler presets: `presets/<task>.toml` (embedded; [`super::TaskDef::preset`]),
//! one section per budget.

use super::info;
use crate::error::{Error, Result};
use crate::sampler::DapsConfig;

/// Sampler budgets in every preset file.
pub const BUDGETS: [&str; 4] = ["daps-1k", "daps-4k", "daps-100", "daps-50"];
/// The budget `daps solve` uses unless told otherwise.
pub const DEFAULT_BUDGET: &str = "daps-1k";

/// The embedded TOML preset file of a task.
pub fn preset_source(task: &str) -> Result<&'static str> {
    Ok(info(task)?.preset)
}

/// The sampler configuration of `budget` (`daps-1k`, `daps-4k`, `daps-100`, `daps-50`) for a task.
pub fn preset(task: &str, budget: &str) -> Result<DapsConfig> {
    let src = preset_source(task)?;
    let table: toml::Table =
        toml::from_str(src).map_err(|e| Error::config(format!("preset file of {task}: {e}")))?;
    let section = table.get(budget).ok_or_else(|| {
        Error::config(format!(
            "unknown preset '{budget}' for task {task} (valid: {})",
            BUDGETS.join(", ")
        ))
    })?;
    let cfg: DapsConfig = section
        .clone()
        .try_into()
        .map_err(|e| Error::config(format!("preset {budget} of {task}: {e}")))?;
    cfg.validate()?;
    Ok(cfg)
}

/// Sets one field of a sampler configuration; `value` is read as TOML (or else as a string).
pub fn set_config(cfg: &DapsConfig, key: &str, value: &str) -> Result<DapsConfig> {
    let mut v = toml::Value::try_from(cfg).expect("serialisable");
    let table = v.as_table_mut().expect("a table");
    if !table.contains_key(key) {
        let keys: Vec<&str> = table.keys().map(|k| k.as_str()).collect();
        return Err(Error::config(format!(
            "unknown sampler setting '{key}' (settings: {})",
            keys.join(", ")
        )));
    }
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    table.insert(key.to_string(), parsed);
    v.try_into()
        .map_err(|e| Error::config(format!("bad value '{value}' for {key}: {e}")))
}
