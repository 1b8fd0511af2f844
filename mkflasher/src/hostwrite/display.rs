//! Progress of `mkflasher write`, one view per target, each an observer of
//! that target's event stream: an indicatif bar in a `MultiProgress` (phase,
//! bytes, rate, ETA) on a terminal, plain log lines (each phase and every
//! 10 %) otherwise, or nothing.

use flasher::progress::{Event, Observer};
use flasher_format::units::iec;
use flasher_format::Phase;
use std::sync::Mutex;

/// Where progress goes.
pub enum Display {
    Bars(indicatif::MultiProgress),
    Lines,
    Quiet,
}

impl Display {
    /// Bars when stderr is a terminal, lines otherwise.
    pub fn auto() -> Display {
        use std::io::IsTerminal;
        if std::io::stderr().is_terminal() {
            Display::Bars(indicatif::MultiProgress::new())
        } else {
            Display::Lines
        }
    }

    /// The view of one target, labelled (`sdb`, `card1.img`).
    pub fn view(&self, label: &str) -> View {
        let kind = match self {
            Display::Bars(m) => {
                let b = m.add(indicatif::ProgressBar::new(0));
                let style = indicatif::ProgressStyle::with_template(
                    "{prefix:<12} {msg:<10} [{bar:30}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> ");
                b.set_style(style);
                b.set_prefix(label.to_string());
                b.set_message("starting");
                Kind::Bar(b)
            }
            Display::Lines => Kind::Lines,
            Display::Quiet => Kind::Quiet,
        };
        View {
            label: label.to_string(),
            kind,
            last: Mutex::new(None),
        }
    }
}

enum Kind {
    Bar(indicatif::ProgressBar),
    Lines,
    Quiet,
}

/// One target's progress.
pub struct View {
    label: String,
    kind: Kind,
    /// The phase shown and, for lines, the last 10 % step printed.
    last: Mutex<Option<(Phase, u64)>>,
}

impl View {
    /// Show the end: "done" or "FAILED".
    pub fn finish(&self, err: Option<&flasher::Error>) {
        match (&self.kind, err) {
            (Kind::Bar(b), None) => b.finish_with_message("done"),
            (Kind::Bar(b), Some(_)) => b.abandon_with_message("FAILED"),
            (Kind::Lines, None) => tracing::info!("{}: done", self.label),
            (Kind::Lines, Some(e)) => {
                tracing::error!("{}: failed: {}", self.label, flasher::error::report(e))
            }
            (Kind::Quiet, _) => {}
        }
    }
}

impl Observer for View {
    fn event(&self, e: &Event) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let Some((done, total, rate)) = e.bytes() else {
            match &self.kind {
                Kind::Bar(b) => b.set_message(e.phase.to_string()),
                Kind::Lines => tracing::info!(
                    "{}: {}{}",
                    self.label,
                    e.phase,
                    e.text().map(|m| format!(": {m}")).unwrap_or_default()
                ),
                Kind::Quiet => {}
            }
            *last = None;
            return;
        };
        let step = (done * 10).checked_div(total).unwrap_or(10);
        let new_phase = last.map(|(p, _)| p) != Some(e.phase);
        match &self.kind {
            Kind::Bar(b) => {
                if new_phase {
                    b.reset();
                    b.set_length(total);
                    b.set_message(e.phase.to_string());
                }
                b.set_position(done);
            }
            Kind::Lines if new_phase || last.map(|(_, s)| s) != Some(step) => {
                tracing::info!(
                    "{}: {} {}% ({} of {}, {}/s)",
                    self.label,
                    e.phase,
                    step * 10,
                    iec(done),
                    iec(total),
                    iec(rate)
                );
            }
            Kind::Lines | Kind::Quiet => {}
        }
        *last = Some((e.phase, step));
    }
}
