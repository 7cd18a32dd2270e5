//! SQL scripts: several statements, with `${name}` parameters.
//!
//! A tracer job is a script run with `proxima sql -f job.sql --param
//! case=<uuid>`. Each `${name}` becomes the parameter's value as a quoted SQL
//! string literal (quotes doubled), so a value can never change the
//! statement's structure; cast it where another type is needed, as in
//! `CAST(${at} AS TIMESTAMP)`. A parameter the script uses but that is not
//! given, or one given but never used, is an error.

use std::collections::{BTreeMap, BTreeSet};

use datafusion::error::{DataFusionError, Result};
use datafusion::sql::parser::{DFParser, Statement};
use datafusion::sql::sqlparser::dialect::GenericDialect;

/// Replaces every `${name}` with the value of `name` as a quoted SQL string literal.
pub fn substitute(script: &str, params: &BTreeMap<String, String>) -> Result<String> {
    let mut out = String::with_capacity(script.len());
    let mut used = BTreeSet::new();
    let mut rest = script;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| DataFusionError::Plan("unterminated parameter: '${' without '}'".into()))?;
        let name = after[..end].trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(DataFusionError::Plan(format!(
                "invalid parameter name '{name}' (letters, digits and _ only)"
            )));
        }
        let value = params.get(name).ok_or_else(|| {
            DataFusionError::Plan(format!(
                "the script uses parameter '{name}': give it with --param {name}=VALUE"
            ))
        })?;
        out.push('\'');
        out.push_str(&value.replace('\'', "''"));
        out.push('\'');
        used.insert(name.to_string());
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    if let Some(unused) = params.keys().find(|k| !used.contains(k.as_str())) {
        return Err(DataFusionError::Plan(format!(
            "parameter '{unused}' is not used by the script"
        )));
    }
    Ok(out)
}

/// Splits a script into its statements.
pub fn parse(script: &str) -> Result<Vec<Statement>> {
    Ok(DFParser::parse_sql_with_dialect(script, &GenericDialect {})?
        .into_iter()
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn parameters_become_quoted_literals() {
        let sql = substitute("SELECT ${a}, ${ b }", &params(&[("a", "x'); DROP"), ("b", "2")])).unwrap();
        assert_eq!(sql, "SELECT 'x''); DROP', '2'");
    }

    #[test]
    fn missing_unused_and_malformed_parameters() {
        let err = substitute("SELECT ${case}", &params(&[])).unwrap_err().to_string();
        assert!(err.contains("uses parameter 'case'"), "{err}");
        let err = substitute("SELECT 1", &params(&[("x", "1")])).unwrap_err().to_string();
        assert!(err.contains("'x' is not used"), "{err}");
        assert!(substitute("SELECT ${a", &params(&[("a", "1")])).is_err());
        assert!(substitute("SELECT ${a-b}", &params(&[])).is_err());
    }

    #[test]
    fn splits_statements() {
        assert_eq!(
            parse("SET datafusion.execution.batch_size = 100; SELECT 1; SELECT 2;")
                .unwrap()
                .len(),
            3
        );
        assert!(parse("SELEC 1").is_err());
    }
}
