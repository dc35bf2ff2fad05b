use std::process::ExitCode;

use clap::Parser;

/// jemalloc: it returns memory after a burst of streams (glibc's malloc keeps
/// it), and holds less per stream.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`: a background thread hands unused
/// pages back to the system within about a second.
#[repr(transparent)]
pub struct MallocConf(*const std::ffi::c_char);

// SAFETY: a pointer to a static, immutable, NUL-terminated string.
unsafe impl Sync for MallocConf {}

#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: MallocConf = MallocConf(
    c"background_thread:true,max_background_threads:1,dirty_decay_ms:1000,muzzy_decay_ms:1000"
        .as_ptr(),
);

fn main() -> ExitCode {
    switchyard::cli::run(switchyard::cli::Cli::parse())
}
