//! The `lifeboat` binary: parse arguments, set up logging, run, map errors to exit codes.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    pin_mmap_threshold();
    cli::main()
}

/// glibc raises its mmap threshold every time a large block is freed; after that the 8 MiB S3
/// part buffers come from the heap arenas of whichever thread allocated them and fragment
/// them, so peak RSS grew with the database (71–81 MiB at 1.28 GB). A fixed 1 MiB threshold
/// keeps large buffers in mmap, returned to the kernel on free: 48 MiB, flat
/// (docs/performance.md).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn pin_mmap_threshold() {
    // SAFETY: mallopt only tunes glibc's allocator; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn pin_mmap_threshold() {}
