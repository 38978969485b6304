//! Checks shared by the endpoints: names, text, times and ranges, list
//! pages. Each refusal is a 422 naming the field and the fix.

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::ApiError;
use super::jobs::MAX_PAGE;

/// Kubernetes-style name (DNS-1123 label): tenants become namespaces, jobs
/// become resources.
pub(super) fn check_name(field: &str, value: &str) -> Result<(), ApiError> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            field,
            format!(
                "{field}: {value:?} is not a valid name; use 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit"
            ),
        ))
    }
}

/// Free text such as an issuer or image: non-empty, bounded, nothing hidden
/// ([`crate::ledger::types::text_problem`]).
pub(super) fn check_text(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.trim().is_empty() {
        return Err(ApiError::invalid(
            field,
            format!("{field}: must not be empty"),
        ));
    }
    if value.len() > max {
        return Err(ApiError::invalid(
            field,
            format!("{field}: at most {max} bytes"),
        ));
    }
    if let Some(why) = crate::ledger::types::text_problem(value) {
        return Err(ApiError::invalid(field, format!("{field}: {why}")));
    }
    Ok(())
}

/// An instant given as RFC 3339 (`2026-11-01T00:00:00Z`) or a date (`2026-11-01`, midnight UTC).
pub(crate) fn parse_time(field: &str, value: &str) -> Result<DateTime<Utc>, ApiError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(value) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(value, "%Y-%m-%d") {
        if let Some(t) = d.and_hms_opt(0, 0, 0) {
            return Ok(Utc.from_utc_datetime(&t));
        }
    }
    Err(ApiError::invalid(
        field,
        format!("{field}: {value:?} is not a time; use RFC 3339 (2026-11-01T00:00:00Z) or a date (2026-11-01)"),
    ))
}

/// `[from, to)`, either end open.
type TimeRange = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

pub(super) fn parse_range(from: Option<&str>, to: Option<&str>) -> Result<TimeRange, ApiError> {
    let from = from.map(|v| parse_time("from", v)).transpose()?;
    let to = to.map(|v| parse_time("to", v)).transpose()?;
    if let (Some(f), Some(t)) = (from, to) {
        if t < f {
            return Err(ApiError::invalid("to", "to: must not be before from"));
        }
    }
    Ok((from, to))
}

/// One page of a list: `limit` items after the cursor `after`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Items per page, 1..=1000 (default 100).
    pub limit: Option<i64>,
    /// The `next` of the previous page.
    pub after: Option<String>,
}

impl PageQuery {
    /// The page size, checked.
    pub fn size(&self) -> Result<usize, ApiError> {
        checked_limit(self.limit, "; page with `after` for more")
    }
}

/// A list's `limit` query parameter: 1..=[`MAX_PAGE`], default 100; out of
/// range, a 422 naming `limit` (its message ends with `hint`).
pub fn checked_limit(limit: Option<i64>, hint: &str) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(100);
    if !(1..=MAX_PAGE as i64).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("limit: {limit} is outside 1..={MAX_PAGE}{hint}"),
        ));
    }
    Ok(limit as usize)
}

pub(super) fn milli_to_gpus(m: u64) -> f64 {
    m as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_months_and_ranges() {
        assert_eq!(
            parse_time("from", "2026-11-01").unwrap(),
            Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap()
        );
        assert_eq!(
            parse_time("from", "2026-11-01T08:00:00+08:00").unwrap(),
            Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap()
        );
        assert_eq!(
            parse_time("since", "yesterday")
                .unwrap_err()
                .field
                .as_deref(),
            Some("since")
        );
        assert_eq!(
            parse_range(Some("2026-11-02"), Some("2026-11-01"))
                .unwrap_err()
                .field
                .as_deref(),
            Some("to")
        );
    }
}
