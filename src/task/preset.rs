//! The per-task sampler presets: `presets/<task>.toml` (embedded; [`super::TaskDef::preset`]),
//! one section per budget, each naming its sampler (`method = "dps"`; default `daps`).

use super::info;
use crate::error::{Error, Result};
use crate::sampler::{DapsConfig, Method};

/// Sampler budgets in every preset file.
pub const BUDGETS: [&str; 5] = ["daps-1k", "daps-4k", "daps-100", "daps-50", "dps-1000"];
/// Optional sections, each named after its sampler and holding its published settings, in the
/// preset files of the tasks that sampler supports.
pub const METHOD_PRESETS: [&str; 12] = [
    "ddrm",
    "ddnm",
    "pigdm",
    "diffpir",
    "red-diff",
    "mcgdiff",
    "fps",
    "score-ald",
    "pnp-dm",
    "latent-daps",
    "psld",
    "resample",
];
/// Optional sections holding settings tuned on the training digits (0..9000, never the
/// held-out ones), in the preset files of the tasks that were tuned.
pub const TUNED_PRESETS: [&str; 2] = ["daps-tuned", "daps-guided"];
/// The budget `daps solve` uses unless told otherwise, on a task without a [`SOLVE_DEFAULTS`]
/// entry (and `daps solve --method daps` without `--preset`).
pub const DEFAULT_BUDGET: &str = "daps-1k";
/// What `daps solve` runs on a demo task given neither `--preset` nor `--method`: the winner by
/// mean PSNR of the held-out equal-NFE table (`results/digits/equal-nfe.txt`: 100 digits, the
/// built-in prior, 1000 network evaluations per sample, DAPS-1K / daps-tuned / daps-guided /
/// DPS-1000 on the same measurements). Measured on digits only; sr4 and box inpainting are
/// within their paired intervals.
pub const SOLVE_DEFAULTS: [(&str, &str); 7] = [
    ("sr4", "dps-1000"),
    ("inpaint-box", "dps-1000"),
    ("inpaint-random", "daps-guided"),
    ("gaussian-blur", "daps-tuned"),
    ("motion-blur", "dps-1000"),
    ("phase-retrieval", "daps-guided"),
    ("hdr", "dps-1000"),
];

/// The preset `daps solve` runs on `task` without `--preset` and `--method`.
pub fn solve_default(task: &str) -> &'static str {
    SOLVE_DEFAULTS
        .into_iter()
        .find(|(t, _)| *t == task)
        .map_or(DEFAULT_BUDGET, |(_, p)| p)
}

/// The budget `daps solve --method NAME` uses without `--preset`.
pub fn default_budget(method: &str) -> &'static str {
    match method {
        "dps" => "dps-1000",
        "daps-guided" => "daps-guided",
        m => METHOD_PRESETS
            .into_iter()
            .find(|p| *p == m)
            .unwrap_or(DEFAULT_BUDGET),
    }
}

/// The embedded TOML preset file of a task.
pub fn preset_source(task: &str) -> Result<&'static str> {
    Ok(info(task)?.preset)
}

/// Whether the preset file of `task` has a section `budget`.
pub fn has_preset(task: &str, budget: &str) -> bool {
    preset_source(task)
        .ok()
        .and_then(|src| toml::from_str::<toml::Table>(src).ok())
        .is_some_and(|t| t.contains_key(budget))
}

fn preset_table(task: &str) -> Result<toml::Table> {
    toml::from_str(preset_source(task)?)
        .map_err(|e| Error::config(format!("preset file of {task}: {e}")))
}

/// The presets of a task: every [`BUDGETS`] entry, then the [`TUNED_PRESETS`] and
/// [`METHOD_PRESETS`] it has.
pub fn budgets(task: &str) -> Result<Vec<&'static str>> {
    let table = preset_table(task)?;
    let own = TUNED_PRESETS
        .into_iter()
        .chain(METHOD_PRESETS)
        .filter(|b| table.contains_key(*b));
    Ok(BUDGETS.into_iter().chain(own).collect())
}

/// The sampler and settings of `budget` (see [`BUDGETS`]) for a task. A [`METHOD_PRESETS`]
/// section the task lacks gives that sampler's registered defaults (whose `supports` then
/// says whether it can solve the task).
pub fn preset_method(task: &str, budget: &str) -> Result<Method> {
    let table = preset_table(task)?;
    let Some(section) = table.get(budget).and_then(|s| s.as_table()) else {
        if METHOD_PRESETS.contains(&budget) {
            return Method::from_name(budget);
        }
        return Err(Error::config(format!(
            "unknown preset '{budget}' for task {task} (valid: {})",
            budgets(task)?.join(", ")
        )));
    };
    let m = Method::from_table(section)
        .map_err(|e| Error::config(format!("preset {budget} of {task}: {e}")))?;
    m.validate()?;
    Ok(m)
}

/// The sampler a method spec names for a task: a preset section of the task (`daps-50`,
/// `dps-1000`, or a section named after a method), `dps-N` (the task's `dps-1000` with N steps and
/// ζ scaled to the same total guidance), or a registered method's defaults; any of them followed
/// by `@KEY=VALUE` overrides (`daps-1k@tau_rule=measurement@lr_rule=stable@lr=0.5`).
pub fn resolve_method(task: &str, spec: &str) -> Result<Method> {
    if let Some((base, overrides)) = spec.split_once('@') {
        let mut m = resolve_method(task, base)?;
        for kv in overrides.split('@') {
            let (k, v) = kv.split_once('=').ok_or_else(|| {
                Error::config(format!(
                    "method '{spec}': '{kv}' is not KEY=VALUE (overrides are METHOD@KEY=VALUE@…)"
                ))
            })?;
            m = m.set(k, v)?;
        }
        m.validate()?;
        return Ok(m);
    }
    let src = preset_source(task)?;
    let table: toml::Table =
        toml::from_str(src).map_err(|e| Error::config(format!("preset file of {task}: {e}")))?;
    if table.get(spec).is_some_and(|s| s.is_table()) {
        return preset_method(task, spec);
    }
    if let Some(n) = spec
        .strip_prefix("dps-")
        .and_then(|n| n.parse::<usize>().ok())
    {
        let Method::Dps(c) = preset_method(task, "dps-1000")? else {
            return Err(Error::config(format!(
                "preset dps-1000 of {task} is not a DPS preset"
            )));
        };
        let m = Method::Dps(c.with_steps(n));
        m.validate()?;
        return Ok(m);
    }
    Method::from_name(spec).map_err(|_| {
        let sections: Vec<&str> = table.keys().map(|k| k.as_str()).collect();
        let names: Vec<&str> = crate::sampler::METHODS.iter().map(|m| m.name).collect();
        Error::config(format!(
            "unknown method '{spec}' for task {task} (valid: the presets {}, dps-N for DPS with N \
             steps, or a method of `daps methods`: {})",
            sections.join(", "),
            names.join(", ")
        ))
    })
}

/// The DAPS configuration of `budget` (`daps-1k`, `daps-4k`, `daps-100`, `daps-50`) for a task.
pub fn preset(task: &str, budget: &str) -> Result<DapsConfig> {
    match preset_method(task, budget)? {
        Method::Daps(c) => Ok(c),
        m => Err(Error::config(format!(
            "preset {budget} of {task} is a {} preset, not daps",
            m.name()
        ))),
    }
}

/// Sets one field of a DAPS configuration; `value` is read as TOML (or else as a string).
pub fn set_config(cfg: &DapsConfig, key: &str, value: &str) -> Result<DapsConfig> {
    match Method::Daps(cfg.clone()).set(key, value)? {
        Method::Daps(c) => Ok(c),
        // Invariant: `Method::set` changes a setting, never the method.
        _ => unreachable!("set keeps the method"),
    }
}
