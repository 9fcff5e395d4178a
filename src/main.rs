//! The `kvfetch` binary: hand the process's arguments and environment to [`kvfetch::run`].

fn main() -> std::process::ExitCode {
    let lossy = |s: std::ffi::OsString| s.to_string_lossy().into_owned();
    let args: Vec<String> = std::env::args_os().skip(1).map(lossy).collect();
    let env = std::env::vars_os()
        .map(|(k, v)| (lossy(k), lossy(v)))
        .collect();
    std::process::ExitCode::from(kvfetch::run(&args, &env))
}
