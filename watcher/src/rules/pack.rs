//! The shipped rule pack (`rules/*.yaml`), built into the binary so `watcher run` works with
//! no files installed.
use super::Source;

pub const FILES: &[(&str, &str)] = &[
    ("lists.yaml", include_str!("../../../rules/lists.yaml")),
    ("exec.yaml", include_str!("../../../rules/exec.yaml")),
    ("secrets.yaml", include_str!("../../../rules/secrets.yaml")),
    (
        "persistence.yaml",
        include_str!("../../../rules/persistence.yaml"),
    ),
    ("startup.yaml", include_str!("../../../rules/startup.yaml")),
    ("network.yaml", include_str!("../../../rules/network.yaml")),
    ("changes.yaml", include_str!("../../../rules/changes.yaml")),
    (
        "sequences.yaml",
        include_str!("../../../rules/sequences.yaml"),
    ),
];

pub fn sources() -> Vec<Source> {
    FILES
        .iter()
        .map(|(name, text)| Source {
            name: format!("rules/{name}"),
            text: text.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_rule_file_is_embedded() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../rules");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".yaml"))
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = super::FILES.iter().map(|(n, _)| n.to_string()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded);
    }

    #[test]
    fn every_example_of_the_pack_passes() {
        let (policy, sources) = super::super::load(None).unwrap();
        let (n, failures) = super::super::examples::run(&policy, &sources).unwrap();
        assert!(n > 80, "{n} examples");
        assert!(failures.is_empty(), "{failures:#?}");
    }

    #[test]
    fn the_pack_compiles() {
        let (policy, _) = super::super::load(None).unwrap();
        assert!(policy.rules.len() >= 20, "{}", policy.rules.len());
    }
}
