//! A profile to import (`watcher baseline import`, YAML or JSON from a user): refused with an
//! error naming the field, or imported and exported again unchanged in its entries.
#![no_main]
use libfuzzer_sys::fuzz_target;
use watcher::{model::baseline::ProfileExport, pipeline::baseline::profile::Profile};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(x) = serde_yaml_ng::from_str::<ProfileExport>(text) else {
        return;
    };
    if let Ok(p) = Profile::import(&x) {
        let again = p.export();
        assert!(again.entries.len() <= x.entries.len());
        Profile::import(&again).expect("an export imports");
    }
});
