//! The `kvfetch` binary: hand the process's arguments and environment to [`kvfetch::run_os`].
//! Arguments stay bytes (`exec` passes its command's arguments on unchanged).

fn main() -> std::process::ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    std::process::ExitCode::from(kvfetch::run_os(&args, std::env::vars_os()))
}
