//! The rules a catalog file's entries must keep, one function an entry
//! kind: each error names the file, the entry and the rule broken.

use std::collections::HashMap;

use super::{AcceleratorSpec, InventoryEntry, Link, Region, ScoreWeights, MAX_PRICE_MULTIPLIER};
use crate::error::InputError;

pub(super) fn input_err(file: &str, entry: &str, rule: impl std::fmt::Display) -> InputError {
    InputError::new(format!("{file}: {entry}: {rule}"))
}

/// At least one region, and no more than region choice handles.
pub(super) fn region_count(regions: &[Region], file: &str) -> Result<(), InputError> {
    if regions.is_empty() {
        return Err(input_err(
            file,
            "regions",
            "the catalog lists no region; add at least one",
        ));
    }
    let most = crate::regions::job::MAX_REGIONS;
    if regions.len() > most {
        return Err(input_err(
            file,
            "regions",
            format!(
                "{} regions listed; at most {most} are supported",
                regions.len()
            ),
        ));
    }
    Ok(())
}

/// Each accelerator model once, with a positive power; the models' index.
pub(super) fn accelerators(
    accelerators: &[AcceleratorSpec],
    file: &str,
) -> Result<HashMap<String, usize>, InputError> {
    let mut names = HashMap::new();
    for (i, a) in accelerators.iter().enumerate() {
        let entry = format!("accelerators[{i}] ({})", a.model);
        if !(a.power_w.is_finite() && a.power_w > 0.0) {
            return Err(input_err(
                file,
                &entry,
                format!("power_w {} must be a positive number of watts", a.power_w),
            ));
        }
        if names.insert(a.model.clone(), i).is_some() {
            return Err(input_err(
                file,
                &entry,
                "duplicate accelerator model; list each model once",
            ));
        }
    }
    Ok(names)
}

/// A region's own figures and its inventory (not its name's uniqueness,
/// which needs the others).
pub(super) fn region(
    r: &Region,
    entry: &str,
    models: &HashMap<String, usize>,
    file: &str,
) -> Result<(), InputError> {
    if r.name.is_empty() {
        return Err(input_err(
            file,
            entry,
            "name is empty; give every region an id",
        ));
    }
    if !(r.pue.is_finite() && r.pue >= 1.0) {
        return Err(input_err(
            file,
            entry,
            format!(
                "pue {} is below 1.0; PUE is facility energy / IT energy and is at least 1.0",
                r.pue
            ),
        ));
    }
    share(file, entry, "green_share", r.green_share)?;
    dedicated_to(r.dedicated_to.as_deref(), entry, file)?;
    let profiles = [
        r.green_profile.as_deref().map(green_profile),
        r.price_profile.as_deref().map(price_profile),
    ];
    if let Some(Err((field, why))) = profiles.into_iter().flatten().find(Result::is_err) {
        return Err(input_err(file, entry, format!("{field} {why}")));
    }
    non_negative(
        file,
        entry,
        "price_cny_per_kwh",
        r.price_cny_per_kwh,
        "an electricity price is ≥ 0",
    )?;
    non_negative(
        file,
        entry,
        "grid_factor_kg_per_kwh",
        r.grid_factor_kg_per_kwh,
        "an emission factor is ≥ 0 (national 2022 average: 0.5703)",
    )?;
    for (j, inv) in r.inventory.iter().enumerate() {
        inventory(inv, &format!("{entry}.inventory[{j}]"), models, file)?;
    }
    Ok(())
}

/// The tenant a region is reserved to, when it names one.
fn dedicated_to(tenant: Option<&str>, entry: &str, file: &str) -> Result<(), InputError> {
    let Some(t) = tenant else { return Ok(()) };
    let problem = if t.is_empty() {
        Some("is empty; name the tenant the region is reserved to, or leave it out".to_string())
    } else {
        crate::ledger::types::text_problem(t)
    };
    match problem {
        Some(why) => Err(input_err(file, entry, format!("dedicated_to {why}"))),
        None => Ok(()),
    }
}

/// One inventory entry: a known model, whole nodes, and a topology whose
/// parts are not empty.
fn inventory(
    inv: &InventoryEntry,
    entry: &str,
    models: &HashMap<String, usize>,
    file: &str,
) -> Result<(), InputError> {
    if !models.contains_key(&inv.model) {
        return Err(input_err(
            file,
            entry,
            format!(
                "unknown accelerator model {:?}; add it under accelerators",
                inv.model
            ),
        ));
    }
    if inv.nodes == 0 {
        return Err(input_err(
            file,
            entry,
            "nodes 0 must be ≥ 1; leave the entry out for a model the region does not have",
        ));
    }
    if inv.gpus_per_node == 0 || inv.gpus_per_node > 64 {
        return Err(input_err(
            file,
            entry,
            format!("gpus_per_node {} must be 1..=64", inv.gpus_per_node),
        ));
    }
    match (inv.nodes_per_rack, inv.racks_per_block) {
        (Some(0), _) | (_, Some(0)) => Err(input_err(
            file,
            entry,
            "nodes_per_rack and racks_per_block must be ≥ 1 (or left out)",
        )),
        (None, Some(_)) => Err(input_err(
            file,
            entry,
            "racks_per_block needs nodes_per_rack (blocks are made of racks)",
        )),
        _ => Ok(()),
    }
}

/// A link between two different known places, with a latency and a
/// bandwidth that are figures; the places' indices.
pub(super) fn link(
    l: &Link,
    entry: &str,
    places: &HashMap<String, usize>,
    file: &str,
) -> Result<(usize, usize), InputError> {
    let place = |name: &String| {
        places.get(name).copied().ok_or_else(|| {
            input_err(
                file,
                entry,
                format!(
                    "link to unknown region {name:?}; declare it under regions or user_regions"
                ),
            )
        })
    };
    let (a, b) = (place(&l.a)?, place(&l.b)?);
    if a == b {
        return Err(input_err(file, entry, "a link joins two different places"));
    }
    if !(l.rtt_ms.is_finite() && l.rtt_ms >= 0.0) {
        return Err(input_err(
            file,
            entry,
            format!("rtt_ms {} must be ≥ 0", l.rtt_ms),
        ));
    }
    if !(l.bandwidth_gbps.is_finite() && l.bandwidth_gbps > 0.0) {
        return Err(input_err(
            file,
            entry,
            format!("bandwidth_gbps {} must be > 0", l.bandwidth_gbps),
        ));
    }
    Ok((a, b))
}

/// Every scoring weight a finite number ≥ 0.
pub(super) fn weights(w: &ScoreWeights, file: &str) -> Result<(), InputError> {
    for (name, v) in [
        ("carbon", w.carbon),
        ("cost", w.cost),
        ("latency", w.latency),
        ("pack_band", w.pack_band),
        ("shift_cost", w.shift_cost),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(input_err(
                file,
                &format!("scoring.{name}"),
                format!("{name} {v} must be a finite number ≥ 0"),
            ));
        }
    }
    Ok(())
}

/// Checks an hour-of-day green profile: 24 shares, each in [0, 1]. The
/// error names the field (`green_profile` or `green_profile[h]`) and why.
pub fn green_profile(profile: &[f64]) -> Result<(), (String, String)> {
    hourly(
        "green_profile",
        "",
        profile,
        |v| (0.0..=1.0).contains(&v),
        |v| format!("{v} is outside [0, 1]; a share is a fraction (0.35 = 35%)"),
    )
}

/// Checks a time-of-use profile: 24 multipliers, each in (0, 10]. The
/// error names the field (`price_profile` or `price_profile[h]`) and why.
pub fn price_profile(profile: &[f64]) -> Result<(), (String, String)> {
    hourly(
        "price_profile",
        "multiplier ",
        profile,
        |v| v > 0.0 && v <= MAX_PRICE_MULTIPLIER,
        |v| {
            format!("{v} is outside (0, {MAX_PRICE_MULTIPLIER}]; a multiplier of the flat price (0.4 = valley, 1.6 = peak)")
        },
    )
}

/// One value per hour of day, each finite and `ok`; else the first field
/// that is not (`name` or `name[h]`) and why.
fn hourly(
    name: &str,
    what: &str,
    profile: &[f64],
    ok: impl Fn(f64) -> bool,
    why: impl Fn(f64) -> String,
) -> Result<(), (String, String)> {
    if profile.len() != 24 {
        return Err((
            name.into(),
            format!("has {} values; give one {what}per hour (24)", profile.len()),
        ));
    }
    match profile.iter().position(|v| !(v.is_finite() && ok(*v))) {
        Some(h) => Err((format!("{name}[{h}]"), why(profile[h]))),
        None => Ok(()),
    }
}

/// A finite figure ≥ 0; else `field v is negative; rule`.
fn non_negative(
    file: &str,
    entry: &str,
    field: &str,
    v: f64,
    rule: &str,
) -> Result<(), InputError> {
    if !(v.is_finite() && v >= 0.0) {
        return Err(input_err(
            file,
            entry,
            format!("{field} {v} is negative; {rule}"),
        ));
    }
    Ok(())
}

fn share(file: &str, entry: &str, field: &str, v: f64) -> Result<(), InputError> {
    if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
        return Err(input_err(
            file,
            entry,
            format!("{field} {v} is outside [0, 1]; a share is a fraction (0.35 = 35%)"),
        ));
    }
    Ok(())
}
