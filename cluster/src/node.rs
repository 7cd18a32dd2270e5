//! Every node of a cluster runs what the client runs, or the query fails.
//!
//! Ballista checks that its own versions agree, not Proxima's, and nothing of the
//! identifier keys: an executor started without `--id-key` would resolve no rotating
//! identifier and return fewer encounters, silently. So the client sends what it runs
//! ([`proxima_engine::SessionFactory::node`]: Proxima's version and the identifier keys'
//! fingerprint) as the setting `proxima_cluster.node`, and the scheduler, before it plans,
//! and each executor, before it runs a task, refuse a query from a client that runs
//! something else.

use std::any::Any;

use datafusion::common::config::{ConfigEntry, ConfigExtension, ExtensionOptions};
use datafusion::error::{DataFusionError, Result};
use datafusion::prelude::SessionConfig;

/// The setting that carries what the client runs.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// What the node that set it runs.
    pub node: String,
}

const NODE: &str = "node";

impl ConfigExtension for NodeOptions {
    const PREFIX: &'static str = "proxima_cluster";
}

impl ExtensionOptions for NodeOptions {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn cloned(&self) -> Box<dyn ExtensionOptions> {
        Box::new(self.clone())
    }

    fn set(&mut self, key: &str, value: &str) -> Result<()> {
        match key.strip_prefix("proxima_cluster.").unwrap_or(key) {
            NODE => {
                self.node = value.to_string();
                Ok(())
            }
            other => Err(DataFusionError::Configuration(format!(
                "unknown setting 'proxima_cluster.{other}' (known: proxima_cluster.{NODE})"
            ))),
        }
    }

    fn entries(&self) -> Vec<ConfigEntry> {
        vec![ConfigEntry {
            key: format!("{}.{NODE}", Self::PREFIX),
            value: Some(self.node.clone()),
            description: "what the client of a cluster runs (Proxima's version, the identifier keys' fingerprint)",
        }]
    }
}

/// `config` with the setting that says `node` runs.
pub fn with_node(config: SessionConfig, node: String) -> SessionConfig {
    config.with_option_extension(NodeOptions { node })
}

/// Refuses a query whose client (its settings, `config`) runs other than `own`, which
/// runs on this `role` (`scheduler`, `executor`).
pub fn check(config: &SessionConfig, own: &str, role: &str) -> Result<()> {
    let client = config
        .options()
        .extensions
        .get::<NodeOptions>()
        .map(|o| o.node.as_str())
        .unwrap_or_default();
    if client == own {
        return Ok(());
    }
    let client = if client.is_empty() {
        "an unknown version (not Proxima's client?)"
    } else {
        client
    };
    Err(DataFusionError::Plan(format!(
        "the client runs {client}, but this {role} runs {own}: every node of a cluster must run the same \
         version of Proxima with the same identifier keys (--id-key)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_setting_travels_with_its_prefix_and_a_difference_is_refused() {
        let sent = with_node(SessionConfig::new(), "Proxima 1 with no identifier keys".into());
        let entries: Vec<(String, Option<String>)> = sent
            .options()
            .entries()
            .into_iter()
            .filter(|e| e.key.starts_with("proxima_cluster"))
            .map(|e| (e.key, e.value))
            .collect();
        assert_eq!(
            entries,
            [(
                "proxima_cluster.node".to_string(),
                Some("Proxima 1 with no identifier keys".to_string())
            )]
        );
        // A receiver that registered the setting with its own value takes the client's.
        let mut received = with_node(SessionConfig::new(), "Proxima 1 with identifier keys ab".into());
        for (key, value) in entries {
            received.options_mut().set(&key, &value.unwrap()).unwrap();
        }
        assert!(check(&received, "Proxima 1 with no identifier keys", "executor").is_ok());
        let err = check(&received, "Proxima 1 with identifier keys ab", "executor")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("the client runs Proxima 1 with no identifier keys, but this executor runs Proxima 1 with identifier keys ab"),
            "{err}"
        );
        assert!(
            check(&SessionConfig::new(), "x", "scheduler")
                .unwrap_err()
                .to_string()
                .contains("unknown version")
        );
    }
}
