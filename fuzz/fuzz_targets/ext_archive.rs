//! The extension archive reader (`/extension_server`'s downloads are outside input): any
//! bytes give files or an error, never a panic, and never more than the size limit.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(files) = compute_ctl::remote_ext::read_archive(data) {
        let total: usize = files.iter().map(|f| f.data.len()).sum();
        assert!(total as u64 <= compute_ctl::remote_ext::MAX_UNPACKED);
        for f in &files {
            assert!(f.path.is_relative() && !f.path.components().any(|c| c == std::path::Component::ParentDir));
        }
    }
});
