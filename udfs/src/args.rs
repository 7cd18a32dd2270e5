//! Argument handling shared by Proxima's functions.

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{ScalarValue, plan_err};
use datafusion::error::Result;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::{ColumnarValue, Expr};
use datafusion::optimizer::simplify_expressions::ExprSimplifier;

/// The kinds of argument Proxima's scalar functions take, for `coerce_types`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ArgKind {
    /// Any string type, passed on as `Utf8`.
    Text,
    /// Any integer type, passed on as `Int64`.
    Integer,
}

/// Coerces `arg_types` to the kinds a function declares, or explains which argument is wrong.
pub(crate) fn coerce(function: &str, kinds: &[ArgKind], arg_types: &[DataType]) -> Result<Vec<DataType>> {
    if arg_types.len() != kinds.len() {
        return plan_err!("{function} takes {} arguments, got {}", kinds.len(), arg_types.len());
    }
    kinds
        .iter()
        .zip(arg_types)
        .enumerate()
        .map(|(i, (kind, t))| match kind {
            ArgKind::Text
                if matches!(
                    t,
                    DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 | DataType::Null
                ) =>
            {
                Ok(DataType::Utf8)
            }
            ArgKind::Integer if t.is_integer() || *t == DataType::Null => Ok(DataType::Int64),
            ArgKind::Text => plan_err!("{function}: argument {} must be text, got {t}", i + 1),
            ArgKind::Integer => plan_err!("{function}: argument {} must be an integer, got {t}", i + 1),
        })
        .collect()
}

/// Turns every argument into an array of `rows` rows; tells whether they all were scalars.
pub(crate) fn to_arrays(args: &[ColumnarValue], rows: usize) -> Result<(Vec<ArrayRef>, bool)> {
    let all_scalar = args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
    let rows = if all_scalar { 1 } else { rows };
    let arrays = args.iter().map(|a| a.to_array(rows)).collect::<Result<_>>()?;
    Ok((arrays, all_scalar))
}

/// Wraps a result array back into a scalar when every input was a scalar.
pub(crate) fn to_columnar(result: ArrayRef, all_scalar: bool) -> Result<ColumnarValue> {
    if all_scalar {
        Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(result.as_ref(), 0)?))
    } else {
        Ok(ColumnarValue::Array(result))
    }
}

/// A simplifier that folds constants the way the session would (`now()` is the query's start).
pub(crate) fn simplifier(session: &dyn datafusion::catalog::Session) -> ExprSimplifier {
    let context = SimplifyContext::builder()
        .with_query_execution_start_time(session.execution_props().query_execution_start_time)
        .with_config_options(std::sync::Arc::new(session.config_options().clone()))
        .build();
    ExprSimplifier::new(context)
}

/// Folds a table function argument to a constant (so `now()` or `TIMESTAMP '…'` become literals).
pub(crate) fn constant(
    function: &str,
    position: usize,
    name: &str,
    expr: &Expr,
    simplifier: &ExprSimplifier,
) -> Result<ScalarValue> {
    match simplifier.simplify(expr.clone())? {
        Expr::Literal(value, _) => Ok(value),
        other => plan_err!("{function}: argument {position} ({name}) must be a constant, got {other}"),
    }
}
