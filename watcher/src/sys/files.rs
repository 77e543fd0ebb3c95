//! What the file system says about files a held process touched.
use std::{os::unix::fs::MetadataExt as _, time::Duration, time::SystemTime};

use crate::model::hold::CreatedFile;

/// How far before the open's event a file's birth may lie and still be the open's creation:
/// the kernel stamps the inode before the syscall's exit hook reads its clock, and the two
/// clocks are read at different moments.
const BIRTH_SLACK: Duration = Duration::from_millis(20);

/// The file at `path` if the open at `opened` created it: its birth time (statx) is at or
/// after the open. None when it existed before, is gone, or the file system keeps no birth
/// time (then nothing will be removed on deny: a file that may have existed is never
/// deleted).
pub fn created_by_open(path: &str, opened: SystemTime) -> Option<CreatedFile> {
    let md = std::fs::symlink_metadata(path).ok()?;
    let born = md.created().ok()?;
    if born + BIRTH_SLACK < opened || !md.is_file() {
        return None;
    }
    Some(CreatedFile {
        path: path.to_string(),
        dev: md.dev(),
        ino: md.ino(),
    })
}

/// Removes a file a denied open created, if the name still names that same file. Returns
/// whether it was removed.
pub fn remove_created(f: &CreatedFile) -> bool {
    let same =
        std::fs::symlink_metadata(&f.path).is_ok_and(|md| md.dev() == f.dev && md.ino() == f.ino);
    same && std::fs::remove_file(&f.path).is_ok()
}
