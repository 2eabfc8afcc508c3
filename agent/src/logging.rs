//! The agent's logs: `tracing` events on stderr (journald or the lab's log file takes
//! them), as text or, with `[log] format = "json"`, one JSON object per line.

use crate::config::LogFormat;

pub fn init(format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
